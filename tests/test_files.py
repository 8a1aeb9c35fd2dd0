"""skinlesion/files.py: an output is never an input, an existing file we did not write is replaced only with
--overwrite, a folder is replaced as a whole only when it carries our mark (never a link, never a user's
files), leftovers of killed runs are cleaned only when marked, and writes are atomic."""

import os
import subprocess
import sys

import pytest

from conftest import fails, fingerprint, marked_folder
from skinlesion import files

HEADER = "isic_id,split,label"


def dead_pid():
    """The pid of a process that has ended."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


# ---------------------------------------------------------------------------- outputs
def test_an_output_that_is_an_input_is_refused(tmp_path, capsys):
    (tmp_path / "photos").mkdir()
    source = tmp_path / "photos" / "metadata.csv"
    source.write_text(files.TAG)  # even a file of ours
    os.symlink(source, tmp_path / "link.csv")
    before = fingerprint(tmp_path)
    for path in [source, tmp_path / "link.csv", tmp_path / "photos" / ".." / "photos" / "metadata.csv"]:
        fails(
            capsys,
            f"--output {path} is also an input ({source}); pass another path",
            files.check_output,
            str(path),
            "--output",
            inputs=[None, str(tmp_path / "x.csv"), str(source)],
            overwrite=True,
        )
    fails(capsys, "is also an input", files.check_output, str(source), "--output", inputs=[str(tmp_path / "link.csv")])
    assert fingerprint(tmp_path) == before


def test_an_existing_file_we_did_not_write_needs_overwrite(tmp_path, capsys):
    theirs = tmp_path / "results.csv"
    theirs.write_text("patient,diagnosis\n1,melanoma\n")
    fails(
        capsys,
        f"--output {theirs} exists and was not written by this project; pass another path, or "
        "--overwrite to replace it",
        files.check_output,
        str(theirs),
        "--output",
    )
    files.check_output(str(theirs), "--output", overwrite=True)
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling.csv")  # a dangling link there is not ours either
    fails(capsys, "exists and was not written", files.check_output, str(tmp_path / "dangling.csv"), "--output")
    fails(
        capsys,
        "exists and was not written",
        files.check_output,
        str(theirs),
        "--output",
        ours=lambda p: files.is_ours(p, header=HEADER),
    )
    assert theirs.read_text() == "patient,diagnosis\n1,melanoma\n"


def test_a_file_of_ours_or_a_new_path_may_be_written(tmp_path):
    tagged, ours_csv = tmp_path / "card.json", tmp_path / "manifest.csv"
    tagged.write_text(f'{{"written_by": "{files.TAG}"}}')
    ours_csv.write_text(f"{HEADER}\r\nISIC_0000001,train,benign\r\n")
    files.check_output(str(tagged), "--card")
    files.check_output(str(ours_csv), "--manifest", ours=lambda p: files.is_ours(p, header=HEADER))
    files.check_output(str(tmp_path / "new.csv"), "--output", inputs=[str(tagged)])


def test_an_output_folder_holding_an_input_is_refused(tmp_path, capsys):
    (tmp_path / "export" / "photos").mkdir(parents=True)
    metadata = tmp_path / "export" / "metadata.csv"
    metadata.write_text("isic_id\n")
    for folder in [tmp_path / "export", tmp_path, tmp_path / "export" / ".." / "export"]:
        fails(
            capsys,
            f"--dataset-dir {folder}: use a folder that does not hold {metadata}",
            files.check_output_folder,
            str(folder),
            "--dataset-dir",
            inputs=[str(metadata)],
        )
    fails(
        capsys,
        "does not hold",
        files.check_output_folder,
        str(tmp_path / "export" / "photos"),
        "--dataset-dir",
        inputs=[None, str(tmp_path / "export" / "photos")],
    )
    files.check_output_folder(str(tmp_path / "dataset"), "--dataset-dir", inputs=[str(metadata), None])
    files.check_output_folder(str(tmp_path / "export2"), "--dataset-dir", inputs=[str(metadata)])  # a prefix only


def test_is_ours(tmp_path):
    big = tmp_path / "model.onnx"
    big.write_bytes(os.urandom(300_000) + files.TAG_BYTES)  # in the last 64 KB: model metadata
    middle = tmp_path / "middle.bin"
    middle.write_bytes(os.urandom(100_000) + files.TAG_BYTES + os.urandom(100_000))
    os.mkfifo(tmp_path / "pipe.csv")  # never opened
    (tmp_path / "m.csv").write_text(f"{HEADER}\nISIC_0000001,train,benign\n")
    assert files.is_ours(str(big)) and not files.is_ours(str(middle))
    assert files.is_ours(str(tmp_path / "m.csv"), header=HEADER) and not files.is_ours(str(tmp_path / "m.csv"))
    assert not files.is_ours(str(tmp_path / "m.csv"), header="isic_id,split")
    assert not files.is_ours(str(tmp_path / "pipe.csv"), header=HEADER) and not files.is_ours(str(tmp_path))
    assert not files.is_ours(str(tmp_path / "missing"))


# ---------------------------------------------------------------------------- folders replaced as a whole
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
        files.check_replaceable,
        str(tmp_path / "link"),
        "--dataset-dir",
        "prepare_dataset.py",
    )
    fails(
        capsys,
        f"--dataset-dir {tmp_path / 'file'}: use a folder, not a file",
        files.check_replaceable,
        str(tmp_path / "file"),
        "--dataset-dir",
        "prepare_dataset.py",
    )
    fails(
        capsys,
        f"--dataset-dir {user} holds files that prepare_dataset.py did not make (sub, thesis.txt); "
        "pass a new or empty folder",
        files.check_replaceable,
        str(user),
        "--dataset-dir",
        "prepare_dataset.py",
    )
    (tmp_path / "empty").mkdir()
    for folder in ["missing", "empty", "ours"]:
        files.check_replaceable(str(tmp_path / folder), "--dataset-dir", "prepare_dataset.py")
    files.check_replaceable(str(user), "--dataset-dir", "prepare_dataset.py", legacy=lambda p: True)
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
    with files.replaced_folder(str(dataset), "prepare_dataset.py") as tmp:
        assert tmp == f"{dataset}.tmp-{os.getpid()}" and os.listdir(tmp) == [files.MARK]
        (tmp_path / os.path.basename(tmp) / "new.csv").write_text("new")
        assert (dataset / "old.csv").exists()  # the old one stays until the new one is complete
    assert sorted(os.listdir(tmp_path)) == ["dataset", "dataset.old-2024-backup", "dataset.tmp-99998"]
    assert sorted(os.listdir(dataset)) == [files.MARK, "new.csv"]
    assert {name: fingerprint(tmp_path / name) for name in theirs} == theirs
    assert capsys.readouterr().out == ""


def test_replaced_folder_restores_a_swap_cut_short_and_keeps_it_on_an_error(tmp_path, capsys):
    old = marked_folder(tmp_path / f"dataset.old-{dead_pid()}", "manifest.csv")  # killed between the two renames
    before = fingerprint(old)
    dataset = tmp_path / "dataset"
    with pytest.raises(RuntimeError), files.replaced_folder(str(dataset), "prepare_dataset.py") as tmp:
        (tmp_path / os.path.basename(tmp) / "manifest.csv").write_text("half")
        raise RuntimeError("the run failed")
    assert f"restored {dataset} from {old}" in capsys.readouterr().out
    assert os.listdir(tmp_path) == ["dataset"] and fingerprint(dataset) == before


def test_replaced_folder_keeps_the_old_folder_on_an_error(tmp_path):
    dataset = marked_folder(tmp_path / "dataset", "manifest.csv")
    before = fingerprint(tmp_path)
    with pytest.raises(KeyboardInterrupt), files.replaced_folder(str(dataset), "prepare_dataset.py") as tmp:
        (tmp_path / os.path.basename(tmp) / "manifest.csv").write_text("half")
        raise KeyboardInterrupt
    assert fingerprint(tmp_path) == before


# ---------------------------------------------------------------------------- atomic writes
def test_atomic_write_keeps_the_previous_file_and_cleans_only_dead_temporaries(tmp_path, capsys):
    target = tmp_path / "out.csv"
    target.write_text("previous")
    dead = dead_pid()
    (tmp_path / f"out.csv.tmp{dead}").write_text("left by a killed run")

    def fails_to_write(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise OSError(28, "No space left on device")

    fails(
        capsys, f"could not write {target} (No space left on device)", files.atomic_write, str(target), fails_to_write
    )
    assert target.read_text() == "previous"
    left = sorted(os.listdir(tmp_path))
    assert f"out.csv.tmp{dead}" not in left and f"out.csv.tmp{os.getpid()}" not in left
    live = tmp_path / f"out.csv.tmp{os.getppid()}"  # our parent is alive
    live.write_text("a live run's")
    files.write_text(str(target), "new")
    assert target.read_text() == "new" and live.exists()


def test_file_kind(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"x")
    os.symlink(tmp_path / "a.jpg", tmp_path / "link.jpg")
    os.mkfifo(tmp_path / "pipe.jpg")
    kinds = {name: files.file_kind(str(tmp_path / name)) for name in ["a.jpg", "link.jpg", "pipe.jpg", "nope"]}
    assert kinds == {"a.jpg": None, "link.jpg": None, "pipe.jpg": "a named pipe", "nope": "missing"}
    assert files.file_kind(str(tmp_path)) == "a folder" and files.file_kind("/dev/null").startswith("a device")
