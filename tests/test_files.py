"""skinlesion/files.py: an output is never an input, an existing file we did not write is replaced only with
--overwrite, and writes are atomic: an error, or a Ctrl-C even where a library swallowed it, keeps the previous
file. (Folders: test_folders.py.)"""

import os

import pytest

from conftest import dead_pid, fails, fingerprint, swallowed_ctrl_c
from skinlesion import files, interrupts

HEADER = "isic_id,split,label"


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
    fails(capsys, expected, files.atomic_write, str(target), torch_save_on_a_full_disk)
    assert fingerprint(tmp_path) == before

    def a_bug(tmp):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        files.atomic_write(str(target), a_bug)
    assert fingerprint(tmp_path) == before
    files.atomic_write(str(target), lambda tmp: torch.save({"w": torch.zeros(2)}, tmp))  # the nearest that works
    assert torch.load(target)["w"].tolist() == [0.0, 0.0]


def test_a_ctrl_c_a_library_swallowed_keeps_the_previous_file(tmp_path, capsys):
    target = tmp_path / "out.csv"
    target.write_text("previous")

    def main():
        swallowed_ctrl_c()
        files.write_text(str(target), "new")

    with pytest.raises(SystemExit) as exit_info:
        interrupts.run_script(main)
    assert exit_info.value.code == 130 and capsys.readouterr().err.strip() == "interrupted"
    assert target.read_text() == "previous" and os.listdir(tmp_path) == ["out.csv"]


def test_file_kind(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"x")
    os.symlink(tmp_path / "a.jpg", tmp_path / "link.jpg")
    os.mkfifo(tmp_path / "pipe.jpg")
    kinds = {name: files.file_kind(str(tmp_path / name)) for name in ["a.jpg", "link.jpg", "pipe.jpg", "nope"]}
    assert kinds == {"a.jpg": None, "link.jpg": None, "pipe.jpg": "a named pipe", "nope": "missing"}
    assert files.file_kind(str(tmp_path)) == "a folder" and files.file_kind("/dev/null").startswith("a device")
