"""skinlesion/files.py and ledger.py: an output is never an input nor a project file; an existing file is
replaced without --overwrite only when the ledger proves we wrote exactly it there as the same kind; writes are
atomic: an error, or a Ctrl-C even where a library swallowed it, keeps the previous file. (Folders:
test_folders.py.)"""

import os
import shutil

import pytest

from conftest import (
    alarm,
    assert_one_error,
    dead_run,
    fails,
    fingerprint,
    lesion_photo,
    recorded,
    run,
    save_model,
    swallowed_ctrl_c,
)
from skinlesion import files, interrupts, ledger


# ---------------------------------------------------------------------------- outputs
def test_an_output_that_is_an_input_is_refused(tmp_path, capsys):
    (tmp_path / "photos").mkdir()
    source = recorded(tmp_path / "photos" / "metadata.csv", "predictions", "isic_id\n")  # even a file of ours
    os.symlink(source, tmp_path / "link.csv")
    before = fingerprint(tmp_path)
    for path in [source, tmp_path / "link.csv", tmp_path / "photos" / ".." / "photos" / "metadata.csv"]:
        fails(
            capsys,
            f"--output {path} is also an input ({source}); pass another path",
            files.check_output,
            str(path),
            "--output",
            "predictions",
            inputs=[None, str(tmp_path / "x.csv"), str(source)],
            overwrite=True,
        )
    fails(
        capsys,
        "is also an input",
        files.check_output,
        str(source),
        "--output",
        "predictions",
        inputs=[str(tmp_path / "link.csv")],
    )
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
        "predictions",
    )
    files.check_output(str(theirs), "--output", "predictions", overwrite=True)
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling.csv")  # a dangling link there is not ours either
    fails(capsys, "exists and was not written", files.check_output, str(tmp_path / "dangling.csv"), "--o", "x")
    assert theirs.read_text() == "patient,diagnosis\n1,melanoma\n"


def test_bytes_inside_a_file_prove_nothing(tmp_path, capsys):
    """The tag, model_name or source_sha256 anywhere in a file (a user's notes, an earlier version's file) is no
    record: refused without --overwrite, with a line that says there is no record."""
    for name, content in [("notes.json", f'{{"written_by": "{files.TAG}"}}'), ("evaluation.json", '"model_name"')]:
        (tmp_path / name).write_text(content)
        expected = f"--output {tmp_path / name} exists with no record that this project wrote it (files of versions"
        fails(capsys, expected, files.check_output, str(tmp_path / name), "--output", "evaluation")
        assert (tmp_path / name).read_text() == content


def test_a_file_of_ours_is_replaced_only_unchanged_at_its_path_and_as_its_kind(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    csv = tmp_path / "a" / "results.csv"
    files.write_text(str(csv), "path,prediction\n", "predictions")
    files.check_output(str(csv), "--csv", "predictions")  # the nearest thing accepted: a rerun replaces its own
    files.check_output(str(tmp_path / "a" / "new.csv"), "--csv", "predictions")  # and a new path
    fix = "pass another path, or --overwrite to replace it"
    fails(capsys, f"--output {csv} holds this project's predictions (this output is its model); {fix}",
          files.check_output, str(csv), "--output", "model")  # fmt: skip
    shutil.copytree(tmp_path / "a", tmp_path / "copy")  # the ledger travels, but names the first folder
    fails(capsys, "exists and was not written", files.check_output, str(tmp_path / "copy" / "results.csv"), "--c", "x")
    os.rename(tmp_path / "a", tmp_path / "b")
    fails(capsys, "exists and was not written", files.check_output, str(tmp_path / "b" / "results.csv"), "--c", "x")
    os.rename(tmp_path / "b", tmp_path / "a")
    files.check_output(str(csv), "--csv", "predictions")
    csv.write_text("path,prediction\nmine,edited\n")
    fails(capsys, f"--csv {csv} was changed since this project wrote it; {fix}",
          files.check_output, str(csv), "--csv", "predictions")  # fmt: skip
    assert csv.read_text() == "path,prediction\nmine,edited\n"


@pytest.mark.parametrize(
    "name", ["model.py", "skinlesion/files.py", "web/index.html", "tests/conftest.py", "README.md", "Makefile"]
)
def test_the_projects_own_files_are_never_an_output(name, capsys):
    path = os.path.join(files.ROOT, name)
    with open(path, "rb") as f:
        before = f.read()
    for kind in ("model", "predictions"):
        expected = f"--output {path} is one of this project's own files; pass another path"
        fails(capsys, expected, files.check_output, path, "--output", kind, overwrite=True)
    with open(path, "rb") as f:
        assert f.read() == before


# ---------------------------------------------------------------------------- atomic writes
def test_atomic_write_keeps_the_previous_file_and_cleans_only_recorded_temporaries_of_runs_that_are_over(
    tmp_path, capsys
):
    target = tmp_path / "results.csv"
    target.write_text("previous")
    killed = tmp_path / "results.csv.tmp12345"
    killed.write_text("left by a killed run")
    with ledger.updated(str(tmp_path)) as data:
        data["pending"][killed.name] = dead_run()
    (tmp_path / "results.csv.tmp99999").write_text("a user's file")  # no record: left alone, whatever pid it names

    def fails_to_write(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise OSError(28, "No space left on device")

    fails(
        capsys,
        f"could not write {target} (No space left on device)",
        files.atomic_write,
        str(target),
        fails_to_write,
        "predictions",
    )
    assert target.read_text() == "previous" and (tmp_path / "results.csv.tmp99999").read_text() == "a user's file"
    left = sorted(os.listdir(tmp_path))
    assert left == ["results.csv", "results.csv.tmp99999"]  # the killed run's went, and the ledger with its record
    live = tmp_path / f"results.csv.tmp{os.getpid()}0"  # a run still going: its record names a live process
    live.write_text("a live run's")
    with ledger.updated(str(tmp_path)) as data:
        data["pending"][live.name] = ledger.this_run()
    files.write_text(str(target), "new", "predictions")
    assert target.read_text() == "new" and live.read_text() == "a live run's"
    assert f"left {tmp_path / 'results.csv.tmp99999'} alone: no record says" in capsys.readouterr().out


def test_a_run_is_over_only_when_provably_so():
    assert not ledger.run_is_over(ledger.this_run())
    assert ledger.run_is_over(dead_run())
    reused = dict(ledger.this_run(), started="another boot:1")  # our pid, another start: a re-used pid
    assert ledger.run_is_over(reused)
    assert not ledger.run_is_over(dict(dead_run(), host="another-host"))  # cannot tell: not over
    assert not ledger.run_is_over({"pid": "1"}) and not ledger.run_is_over(None)


def test_torch_saves_failed_write_is_one_line_naming_the_file_and_keeps_the_previous_one(tmp_path, capsys):
    """torch.save on a full disk raises RuntimeError, not OSError (a 31-line traceback while training); the
    message below is torch's own on a write past RLIMIT_FSIZE. Another RuntimeError is a bug: it stays one."""
    import torch

    target = tmp_path / "mine.pth"
    target.write_bytes(b"the previous model")
    before = fingerprint(tmp_path)

    def torch_save_on_a_full_disk(tmp):
        with open(tmp, "wb") as f:
            f.write(b"half a model")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")

    expected = (
        f"could not write {target} (torch.save: [enforce fail at inline_container.cc:672] . unexpected pos 576 vs "
        "534); free some disk space or pass another path"
    )
    fails(capsys, expected, files.atomic_write, str(target), torch_save_on_a_full_disk, "model")
    assert fingerprint(tmp_path) == before

    def a_bug(tmp):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        files.atomic_write(str(target), a_bug, "model")
    assert fingerprint(tmp_path) == before
    files.atomic_write(
        str(target), lambda tmp: torch.save({"w": torch.zeros(2)}, tmp), "model"
    )  # the nearest that works
    assert torch.load(target)["w"].tolist() == [0.0, 0.0]


def test_a_ctrl_c_a_library_swallowed_keeps_the_previous_file(tmp_path, capsys):
    target = tmp_path / "out.csv"
    target.write_text("previous")

    def main():
        swallowed_ctrl_c()
        files.write_text(str(target), "new", "predictions")

    assert interrupts.run_script(main) == 130 and capsys.readouterr().err.strip() == "interrupted"
    assert target.read_text() == "previous" and os.listdir(tmp_path) == ["out.csv"]


def test_file_kind(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"x")
    os.symlink(tmp_path / "a.jpg", tmp_path / "link.jpg")
    os.mkfifo(tmp_path / "pipe.jpg")
    kinds = {name: files.file_kind(str(tmp_path / name)) for name in ["a.jpg", "link.jpg", "pipe.jpg", "nope"]}
    assert kinds == {"a.jpg": None, "link.jpg": None, "pipe.jpg": "a named pipe", "nope": "missing"}
    assert files.file_kind(str(tmp_path)) == "a folder" and files.file_kind("/dev/null").startswith("a device")


def test_a_kill_between_the_record_and_the_rename_keeps_the_previous_file_ours(tmp_path, monkeypatch, capsys):
    """The record of the new content is written before the rename: the previous content, which a run of ours
    wrote there as the same kind, is still accepted; a user's edit is not."""
    csv = tmp_path / "results.csv"
    files.write_text(str(csv), "first\n", "predictions")

    def killed(*args):
        raise KeyboardInterrupt  # as a SIGKILL would stop it, before the rename

    monkeypatch.setattr(ledger.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        files.write_text(str(csv), "second\n", "predictions")
    monkeypatch.undo()
    assert csv.read_text() == "first\n"
    files.check_output(str(csv), "--csv", "predictions")
    files.write_text(str(csv), "third\n", "predictions")
    assert csv.read_text() == "third\n"
    csv.write_text("my own\n")
    fails(capsys, "was changed since this project wrote it", files.check_output, str(csv), "--csv", "predictions")


# ---------------------------------------------------------------------------- a record that is no record
def hostile_record(folder, case):
    """The record of folder (ledger.NAME) made into what a user or an archive may leave there."""
    os.makedirs(folder, exist_ok=True)
    record = os.path.join(folder, ledger.NAME)
    if case == "a named pipe":
        os.mkfifo(record)
    elif case == "a link to /dev/zero":
        os.symlink("/dev/zero", record)
    elif case == "a folder":
        os.mkdir(record)
    elif case == "nested too deeply":
        with open(record, "w") as f:
            f.write("[" * 100_000 + "]" * 100_000)
    return record


@pytest.mark.parametrize(
    "case, says",
    [
        ("a named pipe", "is a named pipe, not a record this project wrote"),
        ("a link to /dev/zero", "is a symbolic link, not a record this project wrote"),
        ("a folder", "is a folder, not a record this project wrote"),
        ("nested too deeply", "is JSON nested too deeply to read"),
    ],
)
def test_a_record_that_is_not_a_regular_file_is_one_line_naming_it_never_a_hang(tmp_path, capsys, case, says):
    """predict.py --csv checks the output's record (hung for ever on a named pipe); a write records the file
    (a folder of the record's name was 'free some disk space'); a record is never read without a bound."""
    (tmp_path / "results.csv").write_text("path,prediction\n")
    record = hostile_record(str(tmp_path), case)
    expected = f"{record} {says}; move it out of the way"
    with alarm(60, "blocked on the record"):
        fails(capsys, expected, files.check_output, str(tmp_path / "results.csv"), "--csv", "predictions")
        fails(capsys, expected, files.write_text, str(tmp_path / "new.csv"), "text", "predictions")
    assert sorted(os.listdir(tmp_path)) == [ledger.NAME, "results.csv"]  # nothing written, the record as it was
    assert os.lstat(record).st_mode == os.lstat(hostile_record(str(tmp_path / "again"), case)).st_mode


def test_a_record_over_its_bound_is_refused_and_one_within_it_read(tmp_path, monkeypatch, capsys):
    files.write_text(str(tmp_path / "results.csv"), "path,prediction\n", "predictions")
    size = os.path.getsize(tmp_path / ledger.NAME)
    monkeypatch.setattr(ledger, "MAX_BYTES", size)
    files.check_output(str(tmp_path / "results.csv"), "--csv", "predictions")  # the nearest accepted: at the bound
    monkeypatch.setattr(ledger, "MAX_BYTES", size - 1)
    expected = f"{tmp_path / ledger.NAME} is {size:,} bytes, more than a record this project writes"
    fails(capsys, expected, files.check_output, str(tmp_path / "results.csv"), "--csv", "predictions")


def test_the_records_own_temporary_left_by_a_kill_is_ours_and_replaced(tmp_path, capsys):
    """A kill between writing the record's temporary and its rename leaves it: the next write replaces it; a
    named pipe or a link of that name is not ours, and is named."""
    files.write_text(str(tmp_path / "a.csv"), "a\n", "predictions")
    temporary = tmp_path / ledger.TEMPORARY
    temporary.write_text('{"format": 1, "files": {}, "pending": {}}')  # as a kill before the rename leaves it
    files.write_text(str(tmp_path / "b.csv"), "b\n", "predictions")
    assert sorted(os.listdir(tmp_path)) == [ledger.NAME, "a.csv", "b.csv"]
    files.check_output(str(tmp_path / "a.csv"), "--csv", "predictions")  # both still ours
    files.check_output(str(tmp_path / "b.csv"), "--csv", "predictions")
    (tmp_path / "elsewhere.txt").write_text("a user's file")
    os.symlink(tmp_path / "elsewhere.txt", temporary)
    fails(capsys, f"{temporary} is a symbolic link, not the temporary record this project writes there",
          files.write_text, str(tmp_path / "c.csv"), "c\n", "predictions")  # fmt: skip
    assert (tmp_path / "elsewhere.txt").read_text() == "a user's file" and os.path.islink(temporary)


@pytest.mark.slow
def test_predict_csv_in_a_folder_whose_record_is_a_named_pipe_is_one_line_not_a_hang(tmp_path):
    """predict.py --csv hung for ever: the output's record was opened to be read."""
    model_file = save_model(tmp_path / "m.pth", size=32)
    photo = lesion_photo(tmp_path / "a.jpg")
    os.makedirs(tmp_path / "out")
    os.mkfifo(tmp_path / "out" / ledger.NAME)
    r = run("predict.py", photo, "--model", model_file, "--csv", tmp_path / "out" / "p.csv", cwd=tmp_path, timeout=300)
    assert_one_error(r.returncode, r.stderr, f"{tmp_path / 'out' / ledger.NAME} is a named pipe, not a record")
    assert os.listdir(tmp_path / "out") == [ledger.NAME]
