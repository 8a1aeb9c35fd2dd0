"""skinlesion/folders.py: a folder is replaced as a whole only when it carries our mark (never a link, never a
user's files), only once the run ended well (an error, a Ctrl-C, even one a library swallowed, keeps the old
one), leftovers of killed runs are cleaned only when marked, and an output folder never holds an input."""

import os
import shutil

import pytest

from conftest import ctrl_c, dead_run, fails, fingerprint, marked_folder, swallowed_ctrl_c
from skinlesion import folders, interrupts, ledger


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
        "dataset",
    )
    fails(
        capsys,
        f"--dataset-dir {tmp_path / 'file'}: use a folder, not a file",
        folders.check_replaceable,
        str(tmp_path / "file"),
        "--dataset-dir",
        "prepare_dataset.py",
        "dataset",
    )
    fails(
        capsys,
        f"--dataset-dir {user} holds files that prepare_dataset.py did not make (sub, thesis.txt); "
        "pass a new or empty folder",
        folders.check_replaceable,
        str(user),
        "--dataset-dir",
        "prepare_dataset.py",
        "dataset",
    )
    (tmp_path / "empty").mkdir()
    for folder in ["missing", "empty", "ours"]:
        folders.check_replaceable(str(tmp_path / folder), "--dataset-dir", "prepare_dataset.py", "dataset")
    assert fingerprint(tmp_path) == before


def test_a_folder_is_ours_only_when_its_mark_names_it_and_records_every_file(tmp_path, capsys):
    ours = marked_folder(tmp_path / "dataset", "manifest.csv")
    marked_folder(tmp_path / "copy", "manifest.csv", named=ours)  # cp -r dataset copy: the mark names dataset
    marked_folder(tmp_path / "site", "index.html", kind="site")
    (tmp_path / "earlier").mkdir()
    (tmp_path / "earlier" / folders.MARK).write_text("made by prepare_dataset.py")  # an earlier version's mark
    (tmp_path / "earlier" / "manifest.csv").write_text("isic_id,split,label\n")
    before = fingerprint(tmp_path)
    cases = {
        "copy": f"carries the mark of {ours} (a copy or a moved folder)",
        "site": "is a site that prepare_dataset.py made, not a dataset",
        "earlier": "was made by an earlier version (no record of its files)",
    }
    for name, why in cases.items():
        path = tmp_path / name
        fails(capsys, f"--dataset-dir {path} {why}", folders.check_replaceable, str(path), "--dataset-dir",
              "prepare_dataset.py", "dataset")  # fmt: skip
    (ours / "NOTES.txt").write_text("my notes")
    (ours / "train").mkdir()
    (ours / "train" / "extra.jpg").write_text("a photo the user added")
    fails(capsys, f"--dataset-dir {ours} holds files that prepare_dataset.py did not make (NOTES.txt, train/extra.jpg)",
          folders.check_replaceable, str(ours), "--dataset-dir", "prepare_dataset.py", "dataset")  # fmt: skip
    os.remove(ours / "NOTES.txt")
    os.remove(ours / "train" / "extra.jpg")
    with open(ours / "manifest.csv", "a") as f:
        f.write("edited")
    fails(capsys, "did not make (manifest.csv)", folders.check_replaceable, str(ours), "--d", "prepare_dataset.py",
          "dataset")  # fmt: skip
    del before  # the edits above were the test's own


def test_replaced_folder_cleans_only_leftovers_its_mark_proves_of_runs_that_are_over(tmp_path, capsys):
    dataset = marked_folder(tmp_path / "dataset", "old.csv")
    marked_folder(tmp_path / "dataset.tmp-123", "half.csv", leftover_of=dead_run())  # a run killed while building
    marked_folder(tmp_path / "dataset.old-124", "older.csv", named=dataset, leftover_of=dead_run())  # cut short
    (tmp_path / "dataset.old-2024-backup").mkdir()  # the user's, unmarked, not of the form
    (tmp_path / "dataset.old-2024-backup" / "keep.csv").write_text("a backup")
    (tmp_path / "dataset.tmp-99998").mkdir()  # the user's, unmarked
    (tmp_path / "dataset.tmp-99998" / "keep.csv").write_text("not ours")
    marked_folder(tmp_path / "dataset.old-2", "copy.csv", named=dataset)  # cp -r dataset dataset.old-2
    marked_folder(tmp_path / "dataset.tmp-3", "copy.csv", named=dataset)  # cp -r dataset dataset.tmp-3
    running = marked_folder(tmp_path / "dataset.tmp-5", "going.csv", leftover_of=ledger.this_run())  # not over
    theirs = ["dataset.old-2024-backup", "dataset.tmp-99998", "dataset.old-2", "dataset.tmp-3", "dataset.tmp-5"]
    before = {name: fingerprint(tmp_path / name) for name in theirs}
    with folders.replaced_folder(str(dataset), "prepare_dataset.py", "dataset") as tmp:
        assert tmp == f"{dataset}.tmp-{os.getpid()}" and os.listdir(tmp) == [folders.MARK]
        (tmp_path / os.path.basename(tmp) / "new.csv").write_text("new")
        assert (dataset / "old.csv").exists()  # the old one stays until the new one is complete
    assert sorted(os.listdir(tmp_path)) == ["dataset", *sorted(theirs)]
    assert sorted(os.listdir(dataset)) == [folders.MARK, "new.csv"] and folders.unproven(str(dataset)) is None
    assert {name: fingerprint(tmp_path / name) for name in theirs} == before
    said = capsys.readouterr().out.splitlines()
    assert said == [
        f"left {tmp_path / name} alone: no record says a run of ours left it"
        for name in ["dataset.old-2", "dataset.tmp-3", "dataset.tmp-99998"]
    ]
    assert running.exists()


def test_replaced_folder_restores_a_swap_cut_short_and_keeps_it_on_an_error(tmp_path, capsys):
    dataset = tmp_path / "dataset"
    old = marked_folder(tmp_path / "dataset.old-77", "manifest.csv", named=dataset, leftover_of=dead_run())
    before = fingerprint(old)
    del before[folders.MARK]  # the mark changes: it no longer says a run moved the folder
    with pytest.raises(RuntimeError), folders.replaced_folder(str(dataset), "prepare_dataset.py", "dataset") as tmp:
        (tmp_path / os.path.basename(tmp) / "manifest.csv").write_text("half")
        raise RuntimeError("the run failed")
    assert f"restored {dataset} from {old}" in capsys.readouterr().out
    after = fingerprint(dataset)
    del after[folders.MARK]
    assert os.listdir(tmp_path) == ["dataset"] and after == before
    assert folders.unproven(str(dataset), "dataset") is None


def test_a_renamed_dataset_is_no_leftover(tmp_path, capsys):
    """mv dataset dataset.old-1, a NOTES.txt inside: the mark names dataset and no run moved it: left alone."""
    marked_folder(tmp_path / "dataset", "manifest.csv")
    os.rename(tmp_path / "dataset", tmp_path / "dataset.old-1")
    (tmp_path / "dataset.old-1" / "NOTES.txt").write_text("my notes")
    before = fingerprint(tmp_path / "dataset.old-1")
    with folders.replaced_folder(str(tmp_path / "dataset"), "prepare_dataset.py", "dataset") as tmp:
        (tmp_path / os.path.basename(tmp) / "manifest.csv").write_text("new")
    assert fingerprint(tmp_path / "dataset.old-1") == before
    assert capsys.readouterr().out == f"left {tmp_path / 'dataset.old-1'} alone: no record says a run of ours left it\n"


def test_replaced_folder_keeps_the_old_folder_on_an_error(tmp_path):
    dataset = marked_folder(tmp_path / "dataset", "manifest.csv")
    before = fingerprint(tmp_path)
    with (
        pytest.raises(KeyboardInterrupt),
        folders.replaced_folder(str(dataset), "prepare_dataset.py", "dataset") as tmp,
    ):
        (tmp_path / os.path.basename(tmp) / "manifest.csv").write_text("half")
        raise KeyboardInterrupt
    assert fingerprint(tmp_path) == before


def test_a_ctrl_c_a_library_swallowed_keeps_the_old_folder(tmp_path, capsys):
    dataset = marked_folder(tmp_path / "dataset", "manifest.csv")
    before = fingerprint(tmp_path)

    def main():
        with folders.replaced_folder(str(dataset), "prepare_dataset.py", "dataset") as tmp:
            (tmp_path / os.path.basename(tmp) / "manifest.csv").write_text("new")
            swallowed_ctrl_c()  # the block ends as if all went well

    assert interrupts.run_script(main, "interrupted; the previous dataset is untouched") == 130
    assert capsys.readouterr().err.strip() == "interrupted; the previous dataset is untouched"
    assert fingerprint(tmp_path) == before


def test_a_ctrl_c_after_the_swap_says_the_new_folder_is_in_place(tmp_path, capsys):
    dataset = marked_folder(tmp_path / "dataset", "manifest.csv")

    def main():
        with folders.replaced_folder(str(dataset), "prepare_dataset.py", "dataset") as tmp:
            (tmp_path / os.path.basename(tmp) / "manifest.csv").write_text("new")
        ctrl_c()  # while the script prints its summary

    assert interrupts.run_script(main, "interrupted; the previous dataset is untouched") == 130
    assert capsys.readouterr().err.strip() == f"interrupted; {dataset} is already the new one, complete"
    assert (dataset / "manifest.csv").read_text() == "new" and os.listdir(tmp_path) == ["dataset"]


@pytest.mark.parametrize("name, copy", [("site", "site.old-7"), ("demo", "demo.tmp-42")])
def test_copies_named_like_leftovers_are_left_alone(tmp_path, capsys, name, copy):
    """cp -r site site.old-7, cp -r demo demo.tmp-42: the copied mark names the original folder and no run
    moved it there, so the next run leaves the copy byte-identical and names it in one line."""
    ours = marked_folder(tmp_path / name, "index.html", kind="site")
    shutil.copytree(ours, tmp_path / copy)
    before = fingerprint(tmp_path / copy)
    with folders.replaced_folder(str(ours), "serve_web.py", "site") as tmp:
        (tmp_path / os.path.basename(tmp) / "index.html").write_text("new")
    assert fingerprint(tmp_path / copy) == before and sorted(os.listdir(tmp_path)) == sorted([name, copy])
    assert capsys.readouterr().out == f"left {tmp_path / copy} alone: no record says a run of ours left it\n"


def test_the_lock_message_names_the_run_that_holds_it(tmp_path, capsys):
    """prepare_dataset.py builds dataset/ and holds the folder's lock: serve_web.py said 'another serve_web.py
    run is writing'. Now the holder is named from the mark of the folder it builds; before that mark is
    written, no script is named."""
    lock = folders.lock_folder(str(tmp_path), "prepare_dataset.py")
    try:
        fails(capsys, f"a run of a script of this project is writing in {tmp_path}; wait for it to finish, then run "
              "serve_web.py again", folders.lock_folder, str(tmp_path), "serve_web.py")  # fmt: skip
        marked_folder(tmp_path / "dataset.tmp-123", leftover_of=ledger.this_run())  # prepare_dataset.py's mark
        marked_folder(tmp_path / "site.tmp-9", kind="site", leftover_of=dead_run())  # a killed run's leftover
        holder = f"prepare_dataset.py (pid {os.getpid()}, building dataset.tmp-123)"
        fails(capsys, f"{holder} is writing in {tmp_path}; wait for it to finish, then run serve_web.py again",
              folders.lock_folder, str(tmp_path), "serve_web.py")  # fmt: skip
    finally:
        os.close(lock)
    os.close(folders.lock_folder(str(tmp_path), "serve_web.py"))  # the nearest accepted: once it is free


def test_the_records_own_temporary_in_a_folder_of_ours_is_no_stranger(tmp_path):
    """A kill between writing the mark's temporary and its rename left .skin-lesion-classifier.new: the
    rebuild refused it as 'a file prepare_dataset.py did not make'. It is ours: replaced and cleaned."""
    dataset = marked_folder(tmp_path / "dataset", "manifest.csv")
    (dataset / ledger.TEMPORARY).write_text('{"format": 1}')
    assert folders.unproven(str(dataset), "dataset") is None
    folders.check_replaceable(str(dataset), "--dataset-dir", "prepare_dataset.py", "dataset")
    with folders.replaced_folder(str(dataset), "prepare_dataset.py", "dataset") as tmp:
        (tmp_path / os.path.basename(tmp) / "manifest.csv").write_text("new")
    assert sorted(os.listdir(tmp_path)) == ["dataset"] and sorted(os.listdir(dataset)) == [ledger.NAME, "manifest.csv"]


def test_the_old_folder_loses_its_mark_last_so_a_kill_leaves_a_leftover_the_next_run_removes(tmp_path, monkeypatch,
                                                                                             capsys):  # fmt: skip
    """A kill while the swapped-out folder was removed left a dataset.old-<n> without its mark: named for ever,
    never cleaned. Its mark now goes last: cut short, it still proves it; emptied, nothing is lost."""
    dataset = marked_folder(tmp_path / "dataset", "manifest.csv", "notes.csv")
    removed = []

    def killed_after_one(path, *args, **kwargs):
        if removed:
            raise KeyboardInterrupt  # as a SIGKILL would stop it
        removed.append(path)
        os.unlink(path, *args, **kwargs)

    monkeypatch.setattr(folders.os, "remove", killed_after_one)
    with (
        pytest.raises(KeyboardInterrupt),
        folders.replaced_folder(str(dataset), "prepare_dataset.py", "dataset") as tmp,
    ):
        (tmp_path / os.path.basename(tmp) / "manifest.csv").write_text("new")
    monkeypatch.undo()
    old = f"{dataset}.old-{os.getpid()}"
    assert (dataset / "manifest.csv").read_text() == "new" and sorted(os.listdir(old)) == [ledger.NAME, "notes.csv"]
    state = folders.leftovers(str(dataset), "old")
    assert state == [(old, "running")]  # this process: its run goes on
    mark = ledger.read_raw(old)
    mark["leftover"]["run"] = dead_run()  # as the next run sees it, once the killed one is over
    ledger.write(old, mark)
    with folders.replaced_folder(str(dataset), "prepare_dataset.py", "dataset") as tmp:
        (tmp_path / os.path.basename(tmp) / "manifest.csv").write_text("newer")
    assert sorted(os.listdir(tmp_path)) == ["dataset"] and capsys.readouterr().out == ""


def test_a_folder_whose_mark_cannot_be_written_is_removed_again(tmp_path, monkeypatch):
    """A full disk while a missing --log-dir (or --explain-dir) was made left it behind empty and unmarked: what
    the run made is removed again, parents included; a parent that was there stays, and so does a folder another
    wrote into meanwhile."""
    (tmp_path / "there").mkdir()

    def full_disk(path, script, kind):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(folders, "mark_folder", full_disk)
    with pytest.raises(OSError, match="No space left on device"):
        folders.made_folder(str(tmp_path / "there" / "logs" / "deep"), "AItraining.py", "log folder")
    assert os.listdir(tmp_path / "there") == []

    def full_disk_after_another_wrote(path, script, kind):
        (tmp_path / "there" / "logs" / "theirs.txt").write_text("written meanwhile")
        full_disk(path, script, kind)

    monkeypatch.setattr(folders, "mark_folder", full_disk_after_another_wrote)
    with pytest.raises(OSError):
        folders.made_folder(str(tmp_path / "there" / "logs" / "deep"), "AItraining.py", "log folder")
    assert os.listdir(tmp_path / "there" / "logs") == ["theirs.txt"]  # not empty: left as it is
    monkeypatch.undo()
    folders.made_folder(str(tmp_path / "new"), "AItraining.py", "log folder")  # the nearest accepted: made, marked
    assert folders.made_here(str(tmp_path / "new"))
