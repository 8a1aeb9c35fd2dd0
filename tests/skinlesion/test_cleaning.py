"""skinlesion/cleaning.py, make clean: only what the records prove a script of ours made goes; a user's files,
what a link points to (a link anywhere in a path), a folder whose record cannot be read and the leftovers no mark
proves stay and are named in one line, and the rest of the list is still done."""

import os
import shutil
import subprocess
import sys

from conftest import alarm, dead_run, fingerprint, mark_made, marked_folder
from skinlesion import cleaning, files, folders, ledger


def test_remove_ours_removes_only_what_the_record_proves(tmp_path, monkeypatch, capsys):
    """make clean: a user's gradcam/my_notes.txt, runs/other_project/config.json and an evaluation.json that
    contains model_name stay; what our scripts wrote goes (the nearest thing that must be removed)."""
    monkeypatch.chdir(tmp_path)
    folders.made_folder("gradcam", "predict.py", "Grad-CAM folder")
    files.write_text("gradcam/a_jpg_gradcam.png", "picture", "picture")
    (tmp_path / "gradcam" / "my_notes.txt").write_text("notes")
    folders.made_folder("runs", "AItraining.py", "log folder")
    os.makedirs("runs/run1")
    (tmp_path / "runs" / "run1" / "events.out").write_text("log")
    folders.record_files("runs", "run1", "training log")
    os.makedirs("runs/other_project")
    (tmp_path / "runs" / "other_project" / "config.json").write_text('{"model_name": "mine"}')
    (tmp_path / "evaluation.json").write_text('{"model_name": "efficientnet_b0", "written_by": "x"}')
    files.write_text("skin_model.md", "card", "model card")
    marked_folder(tmp_path / "dataset", "manifest.csv")
    marked_folder(tmp_path / "site", "index.html", kind="site")
    (tmp_path / "site" / "NOTES.txt").write_text("mine")
    marked_folder(tmp_path / "demo_data", "metadata.csv", named=tmp_path / "elsewhere")  # a copy
    theirs = ["gradcam/my_notes.txt", "runs/other_project/config.json", "evaluation.json", "site/NOTES.txt"]
    before = {name: fingerprint(tmp_path)[name] for name in theirs}
    before_copy = fingerprint(tmp_path / "demo_data")
    paths = ["dataset", "demo_data", "site", "runs", "gradcam", "skin_model.md", "evaluation.json", "missing.pth"]
    cleaning.remove_ours(paths)
    after = fingerprint(tmp_path)
    assert {name: after.get(name) for name in theirs} == before and fingerprint(tmp_path / "demo_data") == before_copy
    assert sorted(os.listdir(tmp_path)) == ["demo_data", "evaluation.json", "gradcam", "runs", "site"]
    assert sorted(os.listdir("gradcam")) == [folders.MARK, "my_notes.txt"]
    assert sorted(os.listdir("runs")) == [folders.MARK, "other_project"]
    assert sorted(os.listdir("site")) == [folders.MARK, "NOTES.txt"]
    out = capsys.readouterr().out
    for removed in ["dataset", "skin_model.md", "gradcam/a_jpg_gradcam.png", "runs/run1/events.out", "site/index.html"]:
        assert f"removed {removed}\n" in out
    for left in ["demo_data", "gradcam/my_notes.txt", "runs/other_project", "evaluation.json", "site/NOTES.txt"]:
        assert f"left {left} alone: " in out


def test_make_clean_removes_only_what_the_records_prove(tmp_path):
    """The Makefile's clean target, run in a project folder: a user's files that merely contain model_name or
    sit in our folders stay byte-identical; the outputs a script wrote go."""
    os.makedirs(tmp_path / "gradcam")
    (tmp_path / "gradcam" / "my_notes.txt").write_text("model_name: my notes")
    os.makedirs(tmp_path / "runs" / "other_project")
    (tmp_path / "runs" / "other_project" / "config.json").write_text('{"model_name": "resnet"}')
    (tmp_path / "evaluation.json").write_text('{"model_name": "efficientnet_b0"}')
    (tmp_path / "evaluation_mine.json").write_text("{}")  # a user's, of a name an external validation might have
    before = fingerprint(tmp_path)
    files.write_text(str(tmp_path / "evaluation_Clinic_B.json"), "{}", "evaluation")  # an external validation's
    files.write_text(str(tmp_path / "roc_curve_Clinic_B.png"), "a picture", "picture")
    files.write_text(str(tmp_path / "skin_model.md"), "a card", "model card")
    files.write_text(str(tmp_path / "gradcam" / "p_jpg_gradcam.png"), "a picture", "picture")
    marked_folder(tmp_path / "dataset", "manifest.csv")
    env = dict(os.environ, PYTHONPATH=files.ROOT)
    done = subprocess.run(
        ["make", "-s", "-f", os.path.join(files.ROOT, "Makefile"), "clean", f"PY={sys.executable}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert fingerprint(tmp_path) == before
    assert "removed dataset\n" in done.stdout and "left evaluation.json alone" in done.stdout
    assert "left evaluation_mine.json alone" in done.stdout and "removed roc_curve_Clinic_B.png\n" in done.stdout


def test_a_link_anywhere_in_a_path_is_never_followed_and_the_rest_of_the_list_is_done(tmp_path, monkeypatch, capsys):
    """A user moved dataset/train to another disk and left a link: make clean deleted every photo behind it, then
    died with a traceback and skipped the rest of its list. Links at three depths: a class folder's parent, a class
    folder, a photo; what they point to stays byte-identical, each link is named once, the rest goes."""
    monkeypatch.chdir(tmp_path)
    dataset = tmp_path / "dataset"
    for rel in ["manifest.csv", "train/benign/ISIC_0000001.jpg", "val/benign/ISIC_0000002.jpg",
                "test/benign/ISIC_0000003.jpg", "test/malignant/ISIC_0000004.jpg"]:  # fmt: skip
        os.makedirs(dataset / os.path.dirname(rel), exist_ok=True)
        (dataset / rel).write_text(rel)
    mark_made(dataset)  # prepare_dataset.py's dataset: every file recorded
    other = tmp_path / "other_disk"
    other.mkdir()
    shutil.move(dataset / "train", other / "train")  # depth 1: dataset/train
    os.symlink(other / "train", dataset / "train")
    shutil.move(dataset / "val" / "benign", other / "val_benign")  # depth 2: dataset/val/benign
    os.symlink(other / "val_benign", dataset / "val" / "benign")
    shutil.move(dataset / "test" / "benign" / "ISIC_0000003.jpg", other / "ISIC_0000003.jpg")  # depth 3: a photo
    os.symlink(other / "ISIC_0000003.jpg", dataset / "test" / "benign" / "ISIC_0000003.jpg")
    files.write_text("skin_model.md", "a card", "model card")  # after dataset in the list
    before = fingerprint(other)
    cleaning.remove_ours(["dataset", "skin_model.md"])
    out = capsys.readouterr().out
    assert fingerprint(other) == before
    links = ["dataset/train", "dataset/val/benign", "dataset/test/benign/ISIC_0000003.jpg"]
    for link in links:
        assert out.count(f"left {link} alone: a link (what it points to is not removed)\n") == 1, out
        assert os.path.islink(link)
    assert "removed dataset/test/malignant/ISIC_0000004.jpg\n" in out and "removed skin_model.md\n" in out
    assert not os.path.exists("skin_model.md") and not os.path.exists("dataset/manifest.csv")


def test_a_folder_whose_record_is_a_named_pipe_is_named_and_the_rest_is_done(tmp_path, monkeypatch, capsys):
    """make clean hung for ever on a named pipe called .skin-lesion-classifier: now that folder is left alone,
    the pipe named, and the rest of the list removed."""
    monkeypatch.chdir(tmp_path)
    marked_folder(tmp_path / "runs", "events.out", kind="log folder")
    os.makedirs("runs/sub")
    os.mkfifo(os.path.join("runs", "sub", ledger.NAME))
    files.write_text("skin_model.md", "a card", "model card")
    with alarm(60, "blocked on a named pipe"):
        cleaning.remove_ours(["runs", "skin_model.md"])
    out = capsys.readouterr().out
    record = os.path.join("runs", "sub", ledger.NAME)
    assert f"left runs alone: {record} is a named pipe, not a record this project wrote\n" in out
    assert "removed skin_model.md\n" in out and sorted(os.listdir("runs")) == [ledger.NAME, "events.out", "sub"]


def test_leftovers_of_killed_runs_go_when_their_mark_proves_them_and_are_named_otherwise(tmp_path, monkeypatch,
                                                                                         capsys):  # fmt: skip
    """make clean also looks beside each folder: dataset.tmp-<n> and dataset.old-<n> that a killed run's mark
    proves go, and so does an empty one (a removal cut short after its mark went); one without a record is named,
    byte-identical, and so is a run's that goes on."""
    monkeypatch.chdir(tmp_path)
    marked_folder(tmp_path / "dataset", "manifest.csv")
    marked_folder(tmp_path / "dataset.tmp-11", "half.csv", leftover_of=dead_run())
    marked_folder(tmp_path / "dataset.old-12", "old.csv", named=tmp_path / "dataset", leftover_of=dead_run())
    os.makedirs("dataset.old-13")  # emptied, its mark gone last: nothing to lose
    os.makedirs("dataset.old-14/train")
    (tmp_path / "dataset.old-14" / "train" / "ISIC_0000001.jpg").write_text("a half-removed one, no record")
    marked_folder(tmp_path / "dataset.tmp-15", "going.csv", leftover_of=ledger.this_run())
    before = {name: fingerprint(tmp_path / name) for name in ["dataset.old-14", "dataset.tmp-15"]}
    cleaning.remove_ours(["dataset"])
    out = capsys.readouterr().out.splitlines()
    assert sorted(os.listdir(tmp_path)) == ["dataset.old-14", "dataset.tmp-15"]
    assert {name: fingerprint(tmp_path / name) for name in before} == before
    assert out == [
        "removed dataset",
        "removed dataset.tmp-11",
        "left dataset.tmp-15 alone: a run of ours is still writing it",
        "removed dataset.old-12",
        "removed dataset.old-13",
        "left dataset.old-14 alone: no record says a run of ours left it",
    ]


def test_make_clean_lists_every_output_the_scripts_write_by_default():
    """make clean left skin_model.int8.onnx (export_onnx.py's int8 twin): its list is checked against the
    scripts' own defaults."""
    import re

    import AItraining
    import evaluate
    import export_onnx
    import make_demo_data
    import predict
    import prepare_dataset
    import serve_web
    from skinlesion import quantise

    with open(os.path.join(files.ROOT, "Makefile")) as f:
        rule = f.read().split("\nclean:", 1)[1]
    listed = set(re.findall(r"'([^']+)'", rule))
    model_file = AItraining.OUTPUT
    written = {prepare_dataset.DATASET_DIR, make_demo_data.OUT_DIR, serve_web.SITE_DIR, AItraining.LOG_DIR,
               predict.EXPLAIN_DIR, model_file, AItraining.RESUME_FILE, os.path.splitext(model_file)[0] + ".md",
               "training_curves.png", export_onnx.OUTPUT, quantise.quantised_path(export_onnx.OUTPUT),
               "evaluation.json", *evaluate.PICTURES}  # fmt: skip
    for name in ["evaluation.json", *evaluate.PICTURES]:  # an external validation's: its name in them (a glob)
        stem, ext = os.path.splitext(name)
        written.add(f"{stem}_*{ext}")
    assert written - listed == set() and listed - written == set()


def test_make_clean_with_a_named_pipe_for_a_record_ends_names_it_and_does_the_rest(tmp_path):
    """It hung for ever (the pipe opened to be read); now it ends under a timeout."""
    marked_folder(tmp_path / "dataset", "manifest.csv")
    os.makedirs(tmp_path / "runs")
    os.mkfifo(tmp_path / "runs" / ledger.NAME)
    files.write_text(str(tmp_path / "skin_model.md"), "a card", "model card")
    done = subprocess.run(
        ["make", "-s", "-f", os.path.join(files.ROOT, "Makefile"), "clean", f"PY={sys.executable}"],
        cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=files.ROOT),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    record = os.path.join("runs", ledger.NAME)
    assert f"left runs alone: {record} is a named pipe, not a record this project wrote\n" in done.stdout
    assert "removed dataset\n" in done.stdout and "removed skin_model.md\n" in done.stdout
    assert sorted(os.listdir(tmp_path)) == ["runs"]


def test_a_file_is_ours_by_its_sha256_not_its_size_and_remove_ours_leaves_a_changed_one(tmp_path, monkeypatch, capsys):
    """A file we wrote, then changed by a user to other bytes of the same size (and its mtime put back): not ours
    ('changed'), and remove_ours leaves it byte-identical, at the top of the list and in a folder with a ledger
    that also holds a user's file (a folder ours as a whole is compared by size and mtime, folders.unproven);
    the file as written is ours and goes (the nearest that must). Kills the SHA-256 comparison dropped from
    ledger.why_not_ours (the size alone then proves nothing a user could not match)."""
    monkeypatch.chdir(tmp_path)
    folders.made_folder("gradcam", "predict.py", "Grad-CAM folder")
    (tmp_path / "gradcam" / "my_notes.txt").write_text("notes")  # not ours as a whole: each file by its record
    for path in ("p.csv", "gradcam/a_gradcam.png"):
        files.write_text(path, "written by us", "predictions")
        assert ledger.why_not_ours(path) is None
        info = os.stat(path)
        with open(path, "w") as f:
            f.write("written by me")  # as many bytes
        os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))
        assert os.path.getsize(path) == info.st_size and ledger.why_not_ours(path) == "changed"
    files.write_text("q.csv", "written by us", "predictions")
    before = fingerprint(tmp_path)
    cleaning.remove_ours(["p.csv", "gradcam", "q.csv"])
    out = capsys.readouterr().out
    assert "left p.csv alone: not written by this project (or changed since)\n" in out and "removed q.csv\n" in out
    after = fingerprint(tmp_path)
    assert {name: after.get(name) for name in ("p.csv", "gradcam/a_gradcam.png")} == {
        name: before[name] for name in ("p.csv", "gradcam/a_gradcam.png")
    }
    assert not os.path.exists("q.csv")


def test_a_file_of_ours_reached_through_a_link_is_refused_and_what_it_leads_to_stays(tmp_path, monkeypatch, capsys):
    """A file we wrote and left unchanged: its name made a link to it (the file moved elsewhere) is not ours
    ('no record', never opened through the link); reached through a linked folder (linked/sub/a.csv, given to
    remove_ours as it is or absolute) it stays byte-identical and the link is named. Kills `os.path.islink(path)
    or` dropped from ledger.why_not_ours, and (a bug this test found: remove_ours removed the file behind the
    link, against its docstring) a link above the path's last part left unchecked in cleaning.remove_all."""
    monkeypatch.chdir(tmp_path)
    os.makedirs("real/sub")
    files.write_text("real/sub/a.csv", "written by us", "predictions")
    shutil.move("real/sub/a.csv", "moved.csv")
    os.symlink(os.path.abspath("moved.csv"), "real/sub/a.csv")
    assert ledger.why_not_ours("real/sub/a.csv") == "no record"
    os.remove("real/sub/a.csv")
    shutil.move("moved.csv", "real/sub/a.csv")
    assert ledger.why_not_ours("real/sub/a.csv") is None  # ours, unchanged
    os.symlink("real", "linked")
    before = fingerprint(tmp_path / "real")
    cleaning.remove_ours(["linked/sub/a.csv", str(tmp_path / "linked" / "sub" / "a.csv")])
    out = capsys.readouterr().out
    assert fingerprint(tmp_path / "real") == before
    assert out == f"left linked alone: {cleaning.LINK}\nleft {tmp_path / 'linked'} alone: {cleaning.LINK}\n"
    cleaning.remove_ours(["real/sub/a.csv"])  # the nearest that must go: the same file, reached without a link
    assert not os.path.exists("real/sub/a.csv")
