"""skinlesion/folders.py: a folder is replaced as a whole only when it carries our mark (never a link, never a
user's files), only once the run ended well (an error, a Ctrl-C, even one a library swallowed, keeps the old
one), leftovers of killed runs are cleaned only when marked, and an output folder never holds an input."""

import os

import pytest

from conftest import ctrl_c, dead_pid, fails, fingerprint, marked_folder, swallowed_ctrl_c
from skinlesion import folders, interrupts


def test_an_output_folder_holding_an_input_is_refused(tmp_path, capsys):
    (tmp_path / "export" / "photos").mkdir(parents=True)
    metadata = tmp_path / "export" / "metadata.csv"
    metadata.write_text("isic_id\n")
    for folder in [tmp_path / "export", tmp_path, tmp_path / "export" / ".." / "export"]:
        fails(
            capsys,
            f"--dataset-dir {folder}: use a folder that does not hold {metadata}",
            folders.check_output_folder,
            str(folder),
            "--dataset-dir",
            inputs=[str(metadata)],
        )
    fails(
        capsys,
        "does not hold",
        folders.check_output_folder,
        str(tmp_path / "export" / "photos"),
        "--dataset-dir",
        inputs=[None, str(tmp_path / "export" / "photos")],
    )
    folders.check_output_folder(str(tmp_path / "dataset"), "--dataset-dir", inputs=[str(metadata), None])
    folders.check_output_folder(str(tmp_path / "export2"), "--dataset-dir", inputs=[str(metadata)])  # a prefix only


def test_an_output_folder_inside_an_input_folder_is_refused(tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    os.symlink(photos, tmp_path / "link")
    for out in [photos / "maps", tmp_path / "link" / "maps", photos]:
        expected = f"--explain-dir {out}: use a folder outside {photos} (an input)"
        fails(capsys, expected, folders.check_outside, str(out), "--explain-dir", [str(photos)])
    folders.check_outside(str(tmp_path / "maps"), "--explain-dir", [str(photos)])
    folders.check_outside(str(tmp_path / "photos2"), "--explain-dir", [str(photos)])  # a prefix only
    folders.check_outside(str(photos), "--explain-dir", [])


def test_check_replaceable_refuses_links_files_and_a_users_folder(tmp_path, capsys):
    user = tmp_path / "thesis"
    (user / "sub").mkdir(parents=True)
    (user / "thesis.txt").write_text("three years of work")
    (user / "sub" / "notes.md").write_text("notes")
    (tmp_path / "file").write_text("a file")
    ours = marked_folder(tmp_path / "ours", "manifest.csv")
    os.symlink(ours, tmp_path / "link")
    before = fingerprint(tmp_path)
    fails(
        capsys,
        f"--dataset-dir {tmp_path / 'link'} is a symbolic link; pass the folder it points to ({ours})",
        folders.check_replaceable,
        str(tmp_path / "link"),
        "--dataset-dir",
        "prepare_dataset.py",
    )
    fails(
        capsys,
        f"--dataset-dir {tmp_path / 'file'}: use a folder, not a file",
        folders.check_replaceable,
        str(tmp_path / "file"),
        "--dataset-dir",
        "prepare_dataset.py",
    )
    fails(
        capsys,
        f"--dataset-dir {user} holds files that prepare_dataset.py did not make (sub, thesis.txt); "
        "pass a new or empty folder",
        folders.check_replaceable,
        str(user),
        "--dataset-dir",
        "prepare_dataset.py",
    )
    (tmp_path / "empty").mkdir()
    for folder in ["missing", "empty", "ours"]:
        folders.check_replaceable(str(tmp_path / folder), "--dataset-dir", "prepare_dataset.py")
    folders.check_replaceable(str(user), "--dataset-dir", "prepare_dataset.py", legacy=lambda p: True)
    assert fingerprint(tmp_path) == before


def test_replaced_folder_cleans_only_marked_leftovers_of_dead_runs(tmp_path, capsys):
    dataset = marked_folder(tmp_path / "dataset", "old.csv")
    marked_folder(tmp_path / f"dataset.tmp-{dead_pid()}", "half.csv")  # a run killed while building
    marked_folder(tmp_path / f"dataset.old-{dead_pid()}", "older.csv")  # a swap cut short, the new one in place
    (tmp_path / "dataset.old-2024-backup").mkdir()  # the user's, unmarked
    (tmp_path / "dataset.old-2024-backup" / "keep.csv").write_text("a backup")
    (tmp_path / "dataset.tmp-99998").mkdir()
    (tmp_path / "dataset.tmp-99998" / "keep.csv").write_text("not ours")
    theirs = {name: fingerprint(tmp_path / name) for name in ["dataset.old-2024-backup", "dataset.tmp-99998"]}
    with folders.replaced_folder(str(dataset), "prepare_dataset.py") as tmp:
        assert tmp == f"{dataset}.tmp-{os.getpid()}" and os.listdir(tmp) == [folders.MARK]
        (tmp_path / os.path.basename(tmp) / "new.csv").write_text("new")
        assert (dataset / "old.csv").exists()  # the old one stays until the new one is complete
    assert sorted(os.listdir(tmp_path)) == ["dataset", "dataset.old-2024-backup", "dataset.tmp-99998"]
    assert sorted(os.listdir(dataset)) == [folders.MARK, "new.csv"]
    assert {name: fingerprint(tmp_path / name) for name in theirs} == theirs
    assert capsys.readouterr().out == ""


def test_replaced_folder_restores_a_swap_cut_short_and_keeps_it_on_an_error(tmp_path, capsys):
    old = marked_folder(tmp_path / f"dataset.old-{dead_pid()}", "manifest.csv")  # killed between the two renames
    before = fingerprint(old)
    dataset = tmp_path / "dataset"
    with pytest.raises(RuntimeError), folders.replaced_folder(str(dataset), "prepare_dataset.py") as tmp:
        (tmp_path / os.path.basename(tmp) / "manifest.csv").write_text("half")
        raise RuntimeError("the run failed")
    assert f"restored {dataset} from {old}" in capsys.readouterr().out
    assert os.listdir(tmp_path) == ["dataset"] and fingerprint(dataset) == before


def test_replaced_folder_keeps_the_old_folder_on_an_error(tmp_path):
    dataset = marked_folder(tmp_path / "dataset", "manifest.csv")
    before = fingerprint(tmp_path)
    with pytest.raises(KeyboardInterrupt), folders.replaced_folder(str(dataset), "prepare_dataset.py") as tmp:
        (tmp_path / os.path.basename(tmp) / "manifest.csv").write_text("half")
        raise KeyboardInterrupt
    assert fingerprint(tmp_path) == before


def test_a_ctrl_c_a_library_swallowed_keeps_the_old_folder(tmp_path, capsys):
    dataset = marked_folder(tmp_path / "dataset", "manifest.csv")
    before = fingerprint(tmp_path)

    def main():
        with folders.replaced_folder(str(dataset), "prepare_dataset.py") as tmp:
            (tmp_path / os.path.basename(tmp) / "manifest.csv").write_text("new")
            swallowed_ctrl_c()  # the block ends as if all went well

    with pytest.raises(SystemExit) as exit_info:
        interrupts.run_script(main, "interrupted; the previous dataset is untouched")
    assert exit_info.value.code == 130
    assert capsys.readouterr().err.strip() == "interrupted; the previous dataset is untouched"
    assert fingerprint(tmp_path) == before


def test_a_ctrl_c_after_the_swap_says_the_new_folder_is_in_place(tmp_path, capsys):
    dataset = marked_folder(tmp_path / "dataset", "manifest.csv")

    def main():
        with folders.replaced_folder(str(dataset), "prepare_dataset.py") as tmp:
            (tmp_path / os.path.basename(tmp) / "manifest.csv").write_text("new")
        ctrl_c()  # while the script prints its summary

    with pytest.raises(SystemExit) as exit_info:
        interrupts.run_script(main, "interrupted; the previous dataset is untouched")
    assert exit_info.value.code == 130
    assert capsys.readouterr().err.strip() == f"interrupted; {dataset} is already the new one, complete"
    assert (dataset / "manifest.csv").read_text() == "new" and os.listdir(tmp_path) == ["dataset"]
