"""AItraining.py and the training data path: the from-scratch recipe learns, a model at chance is called so,
the augmentation keeps labels and ranges, the cached and streamed photos give the same run, resume replays
a run exactly with its own settings, divergence and mistakes stop at once in one line, a kill or Ctrl-C never
costs the best model, torchrun works."""

import glob
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

import AItraining
import export_onnx
import model
import predict
import serve_web
from conftest import (
    ENV,
    ROOT,
    assert_one_error,
    fails,
    fingerprint,
    finish,
    front_matter,
    lesion_photo,
    main_fails,
    make_split_tree,
    noise_image,
    recorded,
    refuses,
    run,
    save_model,
    start,
)
from skinlesion import (
    dataset,
    familiarity,
    files,
    folders,
    folds,
    interrupts,
    ledger,
    metrics,
    model_file,
    splits,
    training,
)

FAST = ["--no-pretrained", "--image-size", 32, "--batch-size", 8, "--num-workers", 0, "--folds", 1]  # one split


def runs(log_dir):
    """The run folders in a TensorBoard log folder (which carries our mark beside them)."""
    return [name for name in os.listdir(log_dir) if name != folders.MARK]


def epoch_lines(stdout):
    """The epoch lines without their wall time."""
    return [re.sub(r"\| \d+s", "", line) for line in stdout.splitlines() if line.startswith("epoch ")]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_split_tree(tmp_path_factory.mktemp("tiny") / "data", n=12, splits=("train", "val"), size=40)


# ---------------------------------------------------------------------------- it learns, and says when it did not
def test_the_scratch_recipe_learns_the_demo_set(trained_model, demo_dataset):
    path, out = trained_model
    assert "recipe: scratch (random weights: --no-pretrained): optimizer adamw, lr 0.003, weight_decay 0.05" in out
    assert "photos cached on the device" in out and "cannot be told from chance" not in out
    net, meta = model.load_checkpoint(path)
    best = meta["val_metrics"]
    assert best["roc_auc"] >= 0.9 and best["accuracy"] >= 0.85 and best["sensitivity"] >= 0.9, out
    assert meta["val_auc_ci95"][0] > 0.5 and meta["at_chance"] is False
    assert meta["image_size"] == 64 and 0 < meta["threshold"] < 1
    assert meta["settings"]["recipe"] == "scratch" and meta["settings"]["epochs"] == 8
    assert meta["manifest_sha256"] == files.file_sha256(os.path.join(demo_dataset, "manifest.csv"))
    folder = os.path.dirname(path)
    assert os.path.getsize(os.path.join(folder, "training_curves.png")) > 0  # beside the model
    assert len(runs(os.path.join(folder, "runs"))) == 1  # one run, one TensorBoard folder


def test_each_epoch_says_numbers_that_need_no_threshold_and_the_end_the_operating_point(trained_model):
    """The epoch lines show losses and ROC-AUC (a threshold re-chosen every epoch jumped: 1.000 then 0.005 on the
    demo); the end names the calibration and the operating point with its intervals, in words."""
    path, out = trained_model
    lines = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 8 and all("log-loss" in line and "AUC" in line for line in lines)
    assert not any(word in line for line in lines for word in ("threshold", "sens", "spec"))
    meta = model_file.read_checkpoint(path)["meta"]
    op, fitted = meta["operating_point"], meta["calibration"]
    assert op["threshold"] == meta["threshold"] and op["target_sensitivity"] == 0.9
    assert op["sensitivity_ci95"][0] <= op["sensitivity"] <= op["sensitivity_ci95"][1]
    assert op["specificity_ci95"][0] <= op["specificity"] <= op["specificity_ci95"][1]
    assert fitted["method"] in ("temperature", "platt", "none") and fitted["a"] > 0
    assert fitted["val_log_loss_after"] <= fitted["val_log_loss_before"]
    assert f"operating point: threshold {op['threshold']:.3f}, {metrics.operating_point_text(op)}" in out
    cv = fitted["cv_log_loss"]
    if fitted["method"] == "none":  # kept only where it lowers the held-out log-loss
        assert "calibration: none (neither temperature nor Platt scaling lowered" in out
        assert cv["none"] <= min(v for v in (cv["temperature"], cv["platt"]) if v is not None)
    else:
        assert f"calibration: {fitted['method']} scaling (validation log-loss" in out
        assert cv[fitted["method"]] < cv["none"]
    train = meta["data"]["counts"]["train"]  # what P assumes: the training photos' share of malignant
    assert meta["prior_malignant"] == pytest.approx(train["malignant"] / sum(train.values()))


def test_the_model_card_is_written_beside_the_model(trained_model):
    """skin_model.md: Hugging Face front matter (YAML) and the sections of a model card, from the model file."""
    path, out = trained_model
    card_file = os.path.splitext(path)[0] + ".md"
    assert f"model card: {card_file}" in out or "model card: skin_model.md" in out
    with open(card_file, encoding="utf-8") as f:
        text = f.read()
    header = front_matter(text)
    assert header["library_name"] == "timm" and "base_model" not in header  # random weights: no base model
    assert header["license"] in ("cc-by-nc-4.0", "cc-by-4.0", "cc0-1.0")
    meta = model_file.read_checkpoint(path)["meta"]
    results = header["model-index"][0]["results"][0]
    assert results["dataset"]["split"] == "validation"
    assert {m["type"]: m["value"] for m in results["metrics"]}["roc_auc"] == round(meta["val_metrics"]["roc_auc"], 4)
    for section in (
        "## Model details",
        "## Intended use",
        "## Training data",
        "## Evaluation",
        "## Factors",
        "## Caveats and recommendations",
        "Out of scope",
        "not a medical device",
    ):
        assert section.lower() in text.lower(), section
    assert "SYNTHETIC" in text  # the demo's attribution came through prepare into the card


REFUSED_OUTPUTS = {  # case: (flags, what the error line says)
    "output is the resume file": (
        ["--resume-file", "skin_model.pth"],
        "--resume-file skin_model.pth: is --output too; pass another path",
    ),
    "a file we did not write": (
        ["--output", "notes.pth"],
        "--output notes.pth exists and was not written by this project; pass another path, or --overwrite",
    ),
    "output is a resume checkpoint of ours": (
        ["--output", "mine_last.pth"],
        "--output mine_last.pth holds this project's resume checkpoint (this output is its model)",
    ),
    "resume file is a model of ours": (
        ["--resume-file", "mine.pth"],
        "--resume-file mine.pth holds this project's model (this output is its resume checkpoint)",
    ),
}


@pytest.mark.parametrize("case", REFUSED_OUTPUTS)
def test_outputs_never_replace_an_input_or_a_file_we_did_not_write(tiny, tmp_path, monkeypatch, capsys, case):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.pth").write_text("a user's own notes, named .pth")
    (tmp_path / "skin_model.md").write_text("# my own notes about my model")
    recorded(tmp_path / "mine.pth", "model", "a model AItraining.py wrote")
    recorded(tmp_path / "mine_last.pth", "resume checkpoint", "a resume checkpoint AItraining.py wrote")
    before = fingerprint(tmp_path)
    flags, expected = REFUSED_OUTPUTS[case]
    main_fails(AItraining.main, [*FAST, "--data-dir", tiny, *flags], capsys, expected)
    assert fingerprint(tmp_path) == before


@pytest.mark.parametrize("name", ["model.py", "skinlesion/files.py", "README.md"])
def test_the_projects_own_files_are_never_an_output(name, tmp_path, monkeypatch, capsys):
    """AItraining.py --output model.py: refused when the flags are read, before any training, whatever the flags."""
    monkeypatch.chdir(tmp_path)
    path = os.path.join(files.ROOT, name)
    with open(path, "rb") as f:
        before = f.read()
    for flags in (["--output", path], ["--output", path, "--overwrite"], ["--resume-file", path]):
        flag = flags[0]
        fails(capsys, f"{flag} {path} is one of this project's own files; pass another path", AItraining.parse_args,
              flags)  # fmt: skip
    with open(path, "rb") as f:
        assert f.read() == before


@pytest.mark.slow
def test_overwrite_replaces_a_file_we_did_not_write(tiny, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.pth").write_text("a user's own notes, named .pth")
    AItraining.main(list(map(str, [*FAST, "--data-dir", tiny, "--epochs", 1, "--output", "notes.pth", "--overwrite"])))
    assert ledger.why_not_ours("notes.pth", "model") is None


@pytest.mark.slow
def test_a_model_at_chance_is_called_so(tmp_path):
    """The same photos in both classes: nothing to learn. The run ends with the warning; the checkpoint carries
    the flag."""
    data = tmp_path / "data"
    for split, n in (("train", 16), ("val", 24)):
        for k, c in enumerate(model.CLASSES):
            for i in range(n):
                lesion_photo(data / split / c / f"ISIC_{k}{i:06d}.jpg", (40, 40), [len(split), i])
    r = run("AItraining.py", *FAST, "--data-dir", data, "--epochs", 2, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "warning: this model cannot be told from chance: the 95% interval of its validation ROC-AUC" in r.stderr
    assert "ImageNet weights" in r.stderr and "--epochs" in r.stderr
    meta = model_file.read_checkpoint(str(tmp_path / "skin_model.pth"))["meta"]
    assert meta["at_chance"] is True and meta["val_auc_ci95"][0] <= 0.5


# ---------------------------------------------------------------------------- the data path
@pytest.mark.slow
def test_cached_and_streamed_photos_give_the_same_run(tiny, tmp_path):
    lines = []
    for cache_gb in (2, 0):
        folder = tmp_path / f"cache{cache_gb}"
        folder.mkdir()
        r = run(
            "AItraining.py",
            *FAST,
            "--data-dir",
            tiny,
            "--epochs",
            2,
            "--num-workers",
            1,
            "--cache-gb",
            cache_gb,
            cwd=folder,
        )
        assert r.returncode == 0, r.stderr
        assert ("cached on the device" if cache_gb else "streamed") in r.stdout
        lines.append(epoch_lines(r.stdout))
    assert lines[0] == lines[1] and len(lines[0]) == 2


# ---------------------------------------------------------------------------- resume
@pytest.mark.slow
def test_same_seed_same_run_and_resume_replays_it_with_its_own_settings(tiny, tmp_path, monkeypatch, capsys):
    """Two runs with one seed are equal; a run interrupted after epoch 2 of 3 and resumed with --resume alone
    (its settings come from the resume file) ends exactly as the uninterrupted run."""
    argv, outs = list(map(str, [*FAST, "--data-dir", tiny, "--epochs", 3])), {}
    for name in ["a", "b"]:
        (tmp_path / name).mkdir()
        monkeypatch.chdir(tmp_path / name)
        AItraining.main(argv)
        outs[name] = capsys.readouterr().out
    assert epoch_lines(outs["a"]) == epoch_lines(outs["b"]) and len(epoch_lines(outs["a"])) == 3
    (tmp_path / "c").mkdir()
    monkeypatch.chdir(tmp_path / "c")
    real, calls = training.train_one_epoch, []

    def interrupted_in_epoch_3(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "train_one_epoch", interrupted_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        AItraining.main(argv)
    monkeypatch.setattr(training, "train_one_epoch", real)
    capsys.readouterr()
    AItraining.main(["--data-dir", str(tiny), "--resume", "--num-workers", "0"])  # no other flag
    out, err = capsys.readouterr()
    assert "after epoch 2 of 3" in out and "could not fetch ImageNet" not in err
    assert epoch_lines(out) == epoch_lines(outs["a"])[2:]
    assert len(runs("runs")) == 1  # one run, one TensorBoard folder


@pytest.mark.slow
def test_resume_says_what_to_do_when_there_is_nothing_to_do(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    AItraining.main(list(map(str, [*FAST, "--data-dir", tiny, "--epochs", 1])))
    capsys.readouterr()
    main_fails(
        AItraining.main,
        ["--data-dir", tiny, "--resume"],
        capsys,
        "already finished (1 of 1 epochs); to train longer pass a higher --epochs, e.g. --epochs 11",
    )
    main_fails(
        AItraining.main,
        ["--data-dir", tiny, "--resume", "--image-size", 64],
        capsys,
        "the run in skin_model_last.pth has image_size 32; resume without --image-size or start a new run",
    )
    main_fails(
        AItraining.main,
        ["--data-dir", tiny, "--resume", "--resume-file", "skin_model.pth"],
        capsys,
        "is --output too; pass another path (resume from the skin_model_last.pth a run writes)",
    )
    shutil.copyfile("skin_model.pth", "best copy.pth")  # a copy of the model, not of the resume checkpoint
    main_fails(
        AItraining.main,
        ["--data-dir", tiny, "--resume", "--resume-file", "best copy.pth"],
        capsys,
        "--resume: best copy.pth has no optimiser state (optimizer, schedule, best, bad_epochs, stopped_early, "
        "history, finished, stage, best_state_dict, best_logits, done); resume from the skin_model_last.pth a run "
        "writes",
    )
    os.remove("best copy.pth")
    other = shutil.copytree(tiny, tmp_path / "other data")  # the same photos, another manifest: another dataset
    with open(other / "manifest.csv", "a") as f:
        f.write("ISIC_0000001,train,benign\n")
    main_fails(
        AItraining.main,
        ["--data-dir", other, "--resume"],
        capsys,
        f"--resume: the run in skin_model_last.pth trained on another dataset (its manifest.csv: SHA-256 "
        f"{files.file_sha256(os.path.join(tiny, 'manifest.csv'))[:12]}; {other}'s: SHA-256 "
        f"{files.file_sha256(other / 'manifest.csv')[:12]}); pass the --data-dir it trained on, or start a new run",
    )
    three = make_split_tree(tmp_path / "three classes", n=4, splits=("train", "val"), size=32)
    shutil.copytree(os.path.join(three, "train", "benign"), os.path.join(three, "train", "nevus"))
    shutil.copytree(os.path.join(three, "val", "benign"), os.path.join(three, "val", "nevus"))
    manifest = pd.DataFrame(
        {
            "isic_id": ["a", "b", "c"],
            "split": "train",
            "label": ["benign", "malignant", "nevus"],
            "side": ["benign", "malignant", "benign"],
            "label_value": ["B", "M", "N"],
        }
    )
    manifest.to_csv(os.path.join(three, "manifest.csv"), index=False)
    main_fails(
        AItraining.main,
        ["--data-dir", three, "--resume"],
        capsys,
        "--resume: the run in skin_model_last.pth trained classes ['benign', 'malignant'], ",
    )
    moved = shutil.copytree(tiny, tmp_path / "moved data")  # the same dataset elsewhere: its manifest byte-identical
    AItraining.main(list(map(str, ["--data-dir", moved, "--resume", "--epochs", 2, "--num-workers", 0])))  # extend
    out = capsys.readouterr().out
    assert "after epoch 1 of 2" in out and epoch_lines(out)[0].startswith("epoch   2")
    assert len(runs("runs")) == 1


@pytest.mark.slow
def test_resume_reads_a_copied_checkpoint_without_overwrite_and_leaves_it_as_it_is(tiny, tmp_path, monkeypatch, capsys):
    """A resume checkpoint copied from another machine is an input: read without --overwrite, left byte-identical
    (no record proves this project wrote it there); the run continues in copy.resumed.pth, which is ours, and a
    Ctrl-C names that one."""
    monkeypatch.chdir(tmp_path)
    AItraining.main(list(map(str, [*FAST, "--data-dir", tiny, "--epochs", 1])))
    os.rename("skin_model_last.pth", "copy.pth")  # no longer the file the record names
    before = fingerprint(tmp_path)["copy.pth"]
    capsys.readouterr()
    AItraining.main(list(map(str, ["--data-dir", tiny, "--resume", "--resume-file", "copy.pth", "--epochs", 2])))
    out = capsys.readouterr().out
    assert "resuming from copy.pth, left as it is (no record that this project wrote it there): this run's " in out
    assert "checkpoints go to copy.resumed.pth" in out and "after epoch 1 of 2" in out
    assert fingerprint(tmp_path)["copy.pth"] == before
    assert ledger.why_not_ours("copy.resumed.pth", "resume checkpoint") is None
    assert model_file.read_checkpoint("copy.resumed.pth")["meta"]["epoch"] == 2
    args = AItraining.parse_args(["--resume", "--resume-file", "copy.pth"])
    assert AItraining.ctrl_c_message(args, True).endswith("--resume-file copy.resumed.pth --output skin_model.pth")
    again = AItraining.parse_args(["--resume", "--resume-file", "copy.resumed.pth"])  # ours: it continues there
    assert again.resume_file == again.resume_from == "copy.resumed.pth"


@pytest.mark.slow
def test_sigkill_mid_epoch_keeps_the_previous_model_and_resume_continues(tmp_path):
    data = make_split_tree(tmp_path / "data", n=48, splits=("train", "val"), size=32)
    save_model(tmp_path / "skin_model.pth", size=32)  # the previous run's model, which this run may replace
    before = fingerprint(tmp_path)["skin_model.pth"]
    last, curves = tmp_path / "skin_model_last.pth", tmp_path / "training_curves.png"
    argv = [*FAST, "--data-dir", data, "--epochs", 30]
    p = start("AItraining.py", argv, lambda _: curves.exists(), cwd=tmp_path, timeout=300)  # epoch 1 all written
    p.send_signal(signal.SIGKILL)  # past it: in epoch 2, or writing it
    code, _, _ = finish(p)
    assert code == -signal.SIGKILL
    assert fingerprint(tmp_path)["skin_model.pth"] == before  # the model file is written once, when the run ends
    finished = model_file.read_checkpoint(str(last))["meta"]["epoch"]
    assert 1 <= finished < 30
    r = run("AItraining.py", "--data-dir", data, "--resume", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"after epoch {finished} of 30" in r.stdout and epoch_lines(r.stdout)[0].startswith(
        f"epoch {finished + 1:3d}"
    )
    assert not glob.glob(str(tmp_path / "*.tmp*"))  # the killed run's temporary file was cleaned
    assert model.load_checkpoint(str(tmp_path / "skin_model.pth"))[1]["epoch"] >= 1  # this run's, finished


# ---------------------------------------------------------------------------- failing safe
HOOKED = """import sys, threading
sys.argv[0] = "AItraining.py"
import AItraining
from skinlesion import familiarity, interrupts


def hang(*args, **kwargs):  # the run's end has begun: the epochs are done, the model file not yet written
    print("fitting the familiarity measure", flush=True)
    threading.Event().wait()


familiarity.fit_on_photos = hang
sys.exit(interrupts.run_script(AItraining.main))
"""


@pytest.mark.slow
def test_a_run_killed_while_it_finishes_leaves_the_previous_model_and_resume_finishes_it(tiny, tmp_path):
    """SIGKILL while the familiarity measure is fitted (the child says it is there: a hook, no sleep): the model
    file was never written half-made (the previous one byte-identical, no card), the resume checkpoint is no model
    (predict.py refuses it), and --resume finishes the run without training again: a model with its measure and
    its card, after which --resume says the run finished."""
    save_model(tmp_path / "skin_model.pth", size=32)  # the previous run's model, which this run may replace
    before = fingerprint(tmp_path)
    hooked = tmp_path / "hooked.py"
    hooked.write_text(HOOKED)
    started = lambda p: any("fitting the familiarity measure" in line for line in p.out)  # noqa: E731
    p = start(str(hooked), [*FAST, "--data-dir", tiny, "--epochs", 2], started, cwd=tmp_path, timeout=300)
    p.send_signal(signal.SIGKILL)
    code, out, _ = finish(p)
    assert code == -signal.SIGKILL and "epoch   2" in out
    after = fingerprint(tmp_path)
    assert after["skin_model.pth"] == before["skin_model.pth"] and "skin_model.md" not in after
    r = run("predict.py", os.path.join(tiny, "val", "benign", os.listdir(os.path.join(tiny, "val", "benign"))[0]),
            "--model", "skin_model_last.pth", cwd=tmp_path)  # fmt: skip
    assert_one_error(r.returncode, r.stderr, "skin_model_last.pth is refused: it has no familiarity measure")
    assert "Prediction" not in r.stdout and "finish the run with 'python AItraining.py --resume'" in r.stderr
    r = run("AItraining.py", "--data-dir", tiny, "--resume", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "its epochs are done; finishing it" in r.stdout and not epoch_lines(r.stdout)
    net, meta = model.load_checkpoint(str(tmp_path / "skin_model.pth"))
    assert meta["format"] == model_file.FORMAT and meta["familiarity"]["limit"] > 0 and meta["epoch"] in (1, 2)
    with open(tmp_path / "skin_model.md", encoding="utf-8") as f:
        assert files.file_sha256(str(tmp_path / "skin_model.pth")) in f.read()  # the card of this very file
    r = run("AItraining.py", "--data-dir", tiny, "--resume", cwd=tmp_path)
    assert_one_error(r.returncode, r.stderr, "--resume: the run in skin_model_last.pth already finished (2 of 2")


@pytest.mark.slow
def test_a_ctrl_c_while_the_run_finishes_says_the_model_is_as_it_was(tiny, tmp_path, monkeypatch, capsys):
    """Ctrl-C during the familiarity fit: no model file (there was none), and what the Ctrl-C says is true."""
    monkeypatch.chdir(tmp_path)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(familiarity, "fit_on_photos", interrupted)
    interrupts.SAYS.clear()
    with pytest.raises(KeyboardInterrupt):
        AItraining.main(list(map(str, [*FAST, "--data-dir", tiny, "--epochs", 1])))
    assert not os.path.exists("skin_model.pth") and not os.path.exists("skin_model.md")
    assert interrupts.SAYS[-1].startswith("interrupted; skin_model.pth is as it was (a run writes it when it ends)")
    assert model_file.read_checkpoint("skin_model_last.pth")["finished"] is False


def test_a_model_file_of_this_format_without_its_familiarity_measure_is_refused(tmp_path, capsys):
    """A file of FORMAT 2 always holds its measure once its run finished: one without it is refused by every
    script, never labelled; a file from before the format (no format key) keeps today's behaviour: it is labelled,
    with a note that it cannot flag an unfamiliar photo."""
    photo = lesion_photo(tmp_path / "photo.jpg", (64, 64))
    unfinished = save_model(tmp_path / "unfinished.pth", format=model_file.FORMAT)
    said = f"{unfinished} is refused: it has no familiarity measure, which every finished model file of its format"
    refuses([photo, "--model", unfinished], capsys, said)
    main_fails(export_onnx.main, ["--model", unfinished, "--output", tmp_path / "x.onnx"], capsys, said)
    older = save_model(tmp_path / "older.pth")  # as earlier versions wrote them: no format
    predict.main([photo, "--model", older])
    out, err = capsys.readouterr()
    assert "Prediction" in out and "this model file has no familiarity measure (an earlier version)" in err
    assert model_file.unfinished_fault({"format": 1}) is None and model_file.unfinished_fault(
        {"format": 2, "familiarity": {}}
    )


def test_a_dataset_without_a_validation_split_says_how_to_make_one(tiny, tmp_path, monkeypatch, capsys):
    data = shutil.copytree(tiny, tmp_path / "data")
    shutil.rmtree(data / "val")
    monkeypatch.chdir(tmp_path)
    said = "has no validation split, which training with one split needs to choose the best epoch, the calibration "
    main_fails(AItraining.main, [*FAST, "--data-dir", data], capsys, said + "and the threshold on; re-run "
               "prepare_dataset.py with --val-fraction 0.15 (its default), or pass --folds 5 (cross-validated folds "
               "of the training photos)")  # fmt: skip
    assert os.listdir(tmp_path) == ["data"]


def test_a_training_step_that_cannot_fit_in_memory_is_one_line_before_the_photos_are_read(
    tiny, tmp_path, monkeypatch, capsys
):
    """--image-size 2048 with the default batch died with the allocator's traceback: now the memory is estimated
    first, and the line names the flag to lower and a batch that fits."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(training, "free_gigabytes", lambda device: 4.0)
    net = model.build_model(False, None, 2)[0]
    need = training.training_gigabytes(net, 2048, 24)  # the 24 training photos make the batch
    assert need > 4.0
    fits = int(24 * 4.0 / need)
    said = f"training at --image-size 2048 with batch 24 needs about {need:.1f} GB of memory, cpu has 4.0 GB free; "
    flags = [*FAST, "--data-dir", tiny, "--image-size", 2048, "--batch-size", 32]
    main_fails(AItraining.main, flags, capsys, said + (f"lower --batch-size to {fits}" if fits else "lower --image"))
    assert os.listdir(tmp_path) == []
    training.check_memory(net, 64, 24, torch.device("cpu"))  # the nearest that fits: nothing said


@pytest.mark.slow
def test_training_that_diverges_stops_at_once_and_keeps_the_previous_model(tiny, tmp_path):
    good = save_model(tmp_path / "skin_model.pth", size=32)
    before = fingerprint(tmp_path)
    r = run("AItraining.py", *FAST, "--data-dir", tiny, "--epochs", 5, "--lr", 1e9, cwd=tmp_path)
    assert_one_error(r.returncode, r.stderr, "training diverged: the loss became nan in epoch 1/5")
    assert "lower --lr" in r.stderr and "epoch " not in r.stdout
    assert fingerprint(tmp_path)["skin_model.pth"] == before["skin_model.pth"]
    model.load_checkpoint(good)


@pytest.mark.parametrize(
    "flag, value, expected",
    [
        ("--epochs", 0, "--epochs 0: use 1 to 1e6 (or set EPOCHS at the top of AItraining.py)"),
        ("--batch-size", 0, "--batch-size 0: use 1 to 100000 (or set BATCH_SIZE at the top of AItraining.py)"),
        ("--image-size", 31, "--image-size 31: use 32 to 2048 (or set IMAGE_SIZE"),
        ("--image-size", -5, "--image-size -5: use 32 to 2048"),
        ("--image-size", 2049, "--image-size 2049: use 32 to 2048"),
        ("--lr", 0, "--lr 0.0: use > 0"),
        ("--lr", "nan", "--lr nan: use > 0"),
        ("--num-workers", -1, "--num-workers -1: use 0 to 256"),
        ("--seed", -1, "--seed -1: use 0 to 2**32 - 1"),
        ("--seed", 2**32, "--seed 4294967296: use 0 to 2**32 - 1"),
        ("--target-sensitivity", 1.01, "--target-sensitivity 1.01: use 0 to 1"),
        ("--recipe", "fast", "use auto or finetune or scratch"),
        ("--warmup", 0.991, "--warmup 0.991: use 0 to 0.99"),
        ("--optimizer", "sgd", "--optimizer sgd: use adam or adamw"),
    ],
)
def test_flags_are_checked_before_any_work(tmp_path, monkeypatch, capsys, flag, value, expected):
    monkeypatch.chdir(tmp_path)
    main_fails(AItraining.main, ["--data-dir", "nowhere", flag, value], capsys, expected)
    assert os.listdir(tmp_path) == []


def test_outputs_that_cannot_be_written_are_found_before_training(tiny, tmp_path, readonly_folder, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    main_fails(
        AItraining.main,
        ["--data-dir", tiny, "--output", os.path.join(readonly_folder, "m.pth")],
        capsys,
        f"--output {readonly_folder}/m.pth: cannot write in {readonly_folder}",
    )
    (tmp_path / "runs").write_text("a file where the logs go")
    main_fails(AItraining.main, ["--data-dir", tiny], capsys, "--log-dir runs is a file; pass a folder")


@pytest.mark.parametrize(
    "case, expected",
    [
        ("a class folder missing", "val has no malignant/; it must hold exactly one folder per class"),
        ("empty split", "val: no images in malignant/; both classes are needed"),
        ("a third folder", "train has the extra .ipynb_checkpoints/"),
        ("no dataset", "train folder nowhere/train not found; make it with 'python prepare_dataset.py'"),
        ("a manifest that is a folder", "manifest.csv is a folder, not a manifest; re-run prepare_dataset.py"),
    ],
)
def test_a_wrong_dataset_folder_is_one_line(tiny, tmp_path, monkeypatch, capsys, case, expected):
    data = shutil.copytree(tiny, tmp_path / "data")
    if case == "a class folder missing":
        shutil.rmtree(data / "val" / "malignant")
    elif case == "empty split":
        for path in glob.glob(str(data / "val" / "malignant" / "*")):
            os.remove(path)
    elif case == "a third folder":  # Jupyter's hidden folder would shift the class indices
        shutil.copytree(data / "train" / "benign", data / "train" / ".ipynb_checkpoints")
    elif case == "a manifest that is a folder":  # was ignored: the card then said the licence was unknown
        os.remove(data / "manifest.csv")
        os.mkdir(data / "manifest.csv")
    monkeypatch.chdir(tmp_path)
    main_fails(AItraining.main, [*FAST, "--data-dir", "nowhere" if case == "no dataset" else data], capsys, expected)
    assert not os.path.exists("skin_model.pth")


@pytest.mark.slow
@pytest.mark.parametrize("cache_gb", [2, 0], ids=["cached", "streamed"])
def test_an_unreadable_training_photo_is_one_line(tiny, tmp_path, cache_gb):
    data = shutil.copytree(tiny, tmp_path / "data")
    broken = sorted((data / "train" / "malignant").iterdir())[3]
    broken.write_bytes(broken.read_bytes()[:150])  # truncated
    r = run(
        "AItraining.py",
        *FAST,
        "--data-dir",
        data,
        "--epochs",
        1,
        "--num-workers",
        1,
        "--cache-gb",
        cache_gb,
        cwd=tmp_path,
    )
    assert_one_error(r.returncode, r.stderr, f"{broken} is not a readable image")


@pytest.mark.slow
def test_stray_files_and_small_photos_are_counted_and_training_runs(tiny, tmp_path, monkeypatch, capsys):
    data = shutil.copytree(tiny, tmp_path / "data")
    (data / "train" / "benign" / "notes.txt").write_text("not a photo")
    (data / "train" / "malignant" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (data / "val" / "benign" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    monkeypatch.chdir(tmp_path)
    AItraining.main(list(map(str, [*FAST, "--data-dir", data, "--epochs", 1, "--image-size", 64])))
    out, err = capsys.readouterr()
    assert f"{data / 'train'}: 2 file(s) that are not images skipped" in err
    assert f"{data / 'val'}: 1 file(s) that are not images skipped" in err
    assert "24 of 24 training photos are smaller than 73 px" in err and "--resize-to 73" in err  # 40 px photos
    assert "train: 24 images" in out and "epoch   1" in out
    model.load_checkpoint("skin_model.pth")


def test_ctrl_c_says_the_output_is_as_it_was_before_the_first_epoch_and_how_to_continue_after_it():
    """The two things a Ctrl-C says (the end-to-end case below interrupts a real run after its second epoch)."""
    args = AItraining.parse_args(["--output", "mine.pth", "--data-dir", "d"])
    before = AItraining.ctrl_c_message(args, resumable=False)
    assert before == "interrupted before the first epoch finished; mine.pth is as it was"
    command = "python AItraining.py --resume --resume-file skin_model_last.pth --output mine.pth --data-dir d"
    after = AItraining.ctrl_c_message(args, resumable=True)
    assert after == f"interrupted; mine.pth is as it was (a run writes it when it ends), continue with: {command}"
    default_data = AItraining.parse_args(["--output", "mine.pth"])  # the default data folder is not repeated
    assert AItraining.ctrl_c_message(default_data, True).endswith("--output mine.pth")


@pytest.mark.slow
def test_ctrl_c_says_how_to_continue_this_run_and_following_it_does(tmp_path):
    """`--output mine.pth` said 'skin_model.pth holds the best finished epoch, continue with --resume', and
    following it continued into another run's skin_model.pth. Now it names mine.pth (as it was: a run writes it
    when it ends) and the command, which continues this run and leaves the other model byte-identical."""
    data = make_split_tree(tmp_path / "data", n=48, splits=("train", "val"), size=32)
    save_model(tmp_path / "skin_model.pth", size=32)  # another run's model
    before = fingerprint(tmp_path)["skin_model.pth"]
    argv = [*FAST, "--data-dir", data, "--epochs", 50, "--output", "mine.pth"]
    p = start("AItraining.py", argv, lambda p: any(line.startswith("epoch   2") for line in p.out), cwd=tmp_path)
    os.killpg(p.pid, signal.SIGINT)
    code, out, err = finish(p)
    assert code == 130 and "Traceback" not in err, err
    assert not glob.glob(str(tmp_path / "*.tmp*"))  # no half-written checkpoint
    assert not os.path.exists(tmp_path / "mine.pth")  # written once, when the run ends: "as it was" (none)
    command = f"python AItraining.py --resume --resume-file skin_model_last.pth --output mine.pth --data-dir {data}"
    said = f"interrupted; mine.pth is as it was (a run writes it when it ends), continue with: {command}"
    assert err.strip().splitlines()[-1] == said
    done = model_file.read_checkpoint(str(tmp_path / "skin_model_last.pth"))["meta"]["epoch"]
    r = run("AItraining.py", *shlex.split(command)[2:], "--epochs", done + 1, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"resuming from skin_model_last.pth after epoch {done} of {done + 1}" in r.stdout
    assert fingerprint(tmp_path)["skin_model.pth"] == before
    model.load_checkpoint(str(tmp_path / "mine.pth"))


@pytest.mark.slow
def test_a_full_disk_under_log_dir_is_one_line_naming_the_folder_and_the_flag(tiny, tmp_path):
    """TensorBoard writes from a thread: a full disk was 'error: [Errno 28] No space left on device', naming no file,
    after that thread's traceback."""
    (tmp_path / "logs").mkdir()  # the first write of the run is TensorBoard's: its event file's header (> 16 bytes)
    r = run(
        "AItraining.py", *FAST, "--data-dir", tiny, "--epochs", 1, "--log-dir", "logs", cwd=tmp_path,
        file_size_limit=16,
    )  # fmt: skip
    assert_one_error(r.returncode, r.stderr, "error: could not write the TensorBoard log logs/")
    assert r.stderr.strip().endswith("(File too large); free some disk space or pass another --log-dir"), r.stderr
    assert "Exception in thread" not in r.stderr


@pytest.mark.slow
def test_a_full_disk_while_saving_a_checkpoint_is_one_line_naming_the_file(tiny, tmp_path):
    """torch.save raises RuntimeError on a full disk: it was a 31-line traceback. The previous model stays (a run
    writes it once, when it ends; its resume checkpoint first, after each epoch)."""
    save_model(tmp_path / "mine.pth", size=32)
    before = fingerprint(tmp_path)
    r = run(
        "AItraining.py", *FAST, "--data-dir", tiny, "--epochs", 1, "--output", "mine.pth", "--log-dir", "logs",
        cwd=tmp_path, file_size_limit=1_000_000,
    )  # fmt: skip
    said = "could not write skin_model_last.pth (torch.save: [enforce fail at inline_container"  # the first write
    assert_one_error(r.returncode, r.stderr, said)
    assert "; free some disk space or pass another path" in r.stderr
    after = fingerprint(tmp_path)
    assert after["mine.pth"] == before["mine.pth"] and not glob.glob(str(tmp_path / "*.tmp*"))


# ---------------------------------------------------------------------------- folds
FOLDED = [*FAST[:-2], "--folds", 3, "--epochs", 2, "--deploy", "refit"]  # 3 folds of tiny's 48 photos, the refit


@pytest.fixture(scope="module")
def folded(tiny, tmp_path_factory):
    """(folder, AItraining.py's stdout, the model file's meta): three folds of train plus validation, then the refit."""
    folder = tmp_path_factory.mktemp("folded")
    r = run("AItraining.py", *FOLDED, "--data-dir", tiny, cwd=folder)
    assert r.returncode == 0, r.stdout + r.stderr
    return folder, r.stdout, model.load_checkpoint(str(folder / "skin_model.pth"))[1]


def fold_lines(stdout):
    """The epoch lines of the folds and the refit, without their wall time."""
    return [re.sub(r"\| \d+s", "", line) for line in stdout.splitlines() if line.startswith(("fold ", "refit epoch"))]


@pytest.mark.slow
def test_folds_train_each_fold_then_the_refit_and_choose_on_every_photo(folded, tiny):
    """Each fold trains on the others and picks its best epoch on its own photos; the refit trains on all 48 for the
    median of those epochs; the threshold, calibration and familiarity limit come from the out-of-fold predictions
    of every one of the 48 photos (their ROC-AUC computed here from the folds kept in the resume checkpoint, with
    scikit-learn), and the card says so, with n."""
    from sklearn.metrics import roc_auc_score

    folder, out, meta = folded
    said = [line.split(" |")[0] for line in fold_lines(out)]
    refit = int(np.median(meta["folds"]["epochs"]))
    expected = [f"fold {k}/3 epoch {e:3d}" for k in (1, 2, 3) for e in (1, 2)]
    assert said == expected + [f"refit epoch {e:3d}" for e in range(1, refit + 1)]
    assert meta["folds"] == dict(k=3, photos=48, deployed="refit", epochs=meta["folds"]["epochs"], refit_epochs=refit)
    assert meta["epoch"] == refit and "members" not in meta
    op, m = meta["operating_point"], meta["val_metrics"]
    assert op["n_benign"] + op["n_malignant"] == 48 == m["tp"] + m["fp"] + m["tn"] + m["fn"]
    assert meta["familiarity"]["n_val"] == 48
    last = model_file.read_checkpoint(str(folder / "skin_model_last.pth"))
    train, val = (splits.split_photos(tiny, split, model.CLASSES) for split in ("train", "val"))
    pool = np.concatenate([train[1], val[1]])
    stages = folds.plan(3, "refit", pool, folds.groups_of(train[0] + val[0], dataset.read_manifest(tiny)), 42)
    oof = np.zeros(48)
    for entry, stage in zip(last["done"], stages):
        logits = entry["logits"].numpy()
        oof[stage.held] = logits[:, 1] - logits[:, 0]
    assert m["roc_auc"] == pytest.approx(roc_auc_score(pool, oof))
    with open(folder / "skin_model.md", encoding="utf-8") as f:
        card = f.read()
    assert (
        f"**Out of fold** (3 folds of the 48 train and validation photos; deployed: one network refit on all 48 "
        f"photos for the {refit} epochs the folds chose; each photo predicted by the fold network that did not "
        "train on it, n = 48: the calibration, the threshold and the familiarity limit were chosen on these)"
    ) in card
    assert "of the malignant out-of-fold photos" in card and "of the 48 out-of-fold photos lie within" in card
    assert "3 folds of the 48 train and validation photos; deployed: one network refit" in out
    assert len(runs(folder / "runs")) == 1


@pytest.mark.slow
def test_evaluate_names_the_out_of_fold_photos_of_a_model_with_folds(folded, tiny, tmp_path):
    """evaluate.py on a model with folds says its threshold and familiarity limit were chosen on the out-of-fold
    predictions, within them its 48 out-of-fold photos (not 'validation photos'), and beside the ECE what a
    calibrated P scores on these 24 photos (its report's figure). A copy of the model: the card stays the fixture's."""
    shutil.copy(folded[0] / "skin_model.pth", tmp_path / "skin_model.pth")
    r = run("evaluate.py", "--data-dir", os.path.join(tiny, "val"), "--output-dir", "out", "--n-bootstrap", 100,
            cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    (report_path,) = glob.glob(str(tmp_path / "out" / "evaluation*.json"))  # a folder not named test: external
    with open(report_path, encoding="utf-8") as f:
        report = json.load(f)
    assert "(stored in the checkpoint, chosen on the out-of-fold predictions; not tuned here)" in r.stdout
    within = familiarity.within_text(folded[2]["familiarity"], "out-of-fold photos")
    assert f"chosen on the out-of-fold predictions ({within})" in r.stdout and "validation photos" not in r.stdout
    limit = report["calibration"]["ece_after_if_calibrated"]
    assert f"a perfectly calibrated P scores an ECE up to {limit:.3f} on these 24 photos (95 times in 100)" in r.stdout


@pytest.mark.slow
def test_a_run_with_folds_stopped_in_fold_2_resumes_there_and_ends_as_the_uninterrupted_run(folded, tiny, tmp_path):
    """Ctrl-C once fold 2 has finished an epoch (the child says so): --resume continues in fold 2 (or, where the
    Ctrl-C came before that epoch's checkpoint, with fold 2 anew) and replays the rest exactly as the uninterrupted
    run did, to the same threshold, calibration and familiarity limit."""
    started = lambda p: any(line.startswith("fold 2/3 epoch   1") for line in p.out)  # noqa: E731
    p = start("AItraining.py", [*FOLDED, "--data-dir", tiny], started, cwd=tmp_path, timeout=300)
    os.killpg(p.pid, signal.SIGINT)
    code, _, err = finish(p)
    assert code == 130 and "skin_model.pth is as it was" in err and not os.path.exists(tmp_path / "skin_model.pth")
    r = run("AItraining.py", "--data-dir", tiny, "--resume", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    expected, resumed = fold_lines(folded[1]), fold_lines(r.stdout)  # the Ctrl-C came after the line, before or
    assert 0 < len(resumed) <= len(expected) - 2 and resumed == expected[-len(resumed) :]  # after its checkpoint
    assert resumed[0].startswith(("fold 2/3", "fold 3/3 epoch   1")), resumed[0]
    within = re.search(r"resuming from skin_model_last.pth (fold \d/3) after epoch \d of 2", r.stdout)
    assert within is None or within[1] == "fold 2/3"
    meta = model.load_checkpoint(str(tmp_path / "skin_model.pth"))[1]
    for key in ("threshold", "calibration", "folds", "operating_point"):
        assert meta[key] == folded[2][key], key
    assert meta["familiarity"]["limit"] == pytest.approx(folded[2]["familiarity"]["limit"])


@pytest.mark.slow
def test_the_folds_networks_averaged_are_one_model_file_one_onnx_graph_and_their_maps_averaged(tiny, tmp_path):
    """--deploy ensemble on a dataset with photos of another kind (other_types/): the model file holds the two fold
    networks and their familiarity measures combined (Mahalanobis view and exposure head, each member's fitted on
    the photos it trained on), with the limit at 99% of the members' out-of-fold stand-ins, both recomputed here from
    the resume checkpoint; the ONNX export is one graph with the same outputs (its self-check and parity check on
    every output, the familiarity distance included) that gives the same P; --explain draws the averaged map; the
    same folds deployed refit afterwards (--resume --deploy refit) need no fold trained again, and its measure has
    the head too."""
    data = shutil.copytree(tiny, tmp_path / "data")
    for i in range(8):  # photos of another kind, as prepare_dataset.py keeps them
        noise_image(os.path.join(data, "other_types", f"dermoscopic.ISIC_{9000000 + i}.jpg"), 100 + i, (40, 40))
    r = run("AItraining.py", *FAST[:-2], "--folds", 2, "--epochs", 1, "--deploy", "ensemble", "--data-dir", data,
            cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    net, meta = model.load_checkpoint(str(tmp_path / "skin_model.pth"))
    assert meta["members"] == 2 and len(net.members) == 2 and meta["folds"]["deployed"] == "ensemble"
    assert meta["network"]["features"] == 2 * 1280 and meta["familiarity"]["n_val"] == 48
    assert "the 2 fold networks averaged" in (tmp_path / "skin_model.md").read_text(encoding="utf-8")
    found = meta["familiarity"]
    assert found["method"] == "mahalanobis+exposure" and found["exposed_to"]["dermoscopic photos"] == 8
    done = model_file.read_checkpoint(str(tmp_path / "skin_model_last.pth"))["done"]
    members = [{key: value.double().numpy() for key, value in entry["member"].items()} for entry in done]
    widths = [info["num_chs"] for info in net.members[0].feature_info] + [net.members[0].num_features]
    arrays = folds.ensemble_measure(members, widths)[0]
    for key in familiarity.ARRAYS:  # the stored measure is the members' combined (float32 in the file)
        assert found[key] == pytest.approx(arrays[key], rel=1e-5, abs=1e-6), key
    harmonic = 2 / sum(1 / m["floor"] for m in members)
    stand_ins = [np.maximum(e["member_distances"].numpy() * np.sqrt(harmonic / m["floor"]), e["member_head"].numpy())
                 for e, m in zip(done, members)]  # fmt: skip
    assert found["limit"] == pytest.approx(np.quantile(np.concatenate(stand_ins), 0.99))
    # one epoch from random weights at 32 px: features of a spread near 1e-6, which the head's standardisation
    # magnifies (float32's differences between PyTorch and onnxruntime reach 1e-3 of the distance)
    r = run("export_onnx.py", "--check-images", os.path.join(data, "val"), "--tolerance", 1e-2, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    photo = os.path.join(data, "val", "malignant", sorted(os.listdir(os.path.join(data, "val", "malignant")))[0])
    answers = []
    for flags in (["--model", "skin_model.pth", "--explain"], ["--model", "skin_model.onnx"]):
        r = run("predict.py", photo, *flags, "--show-unfamiliar", cwd=tmp_path)
        assert r.returncode in (0, 3), r.stdout + r.stderr  # 3: unfamiliar
        answers.append(re.search(r"P\(malignant\) = ([\d.]+)", r.stdout + r.stderr))
        assert "of the malignant out-of-fold photos" in r.stdout  # what the operating point was chosen on
    assert answers[0] and answers[1] and answers[0][1] == answers[1][1]
    page = serve_web.read_model(str(tmp_path / "skin_model.onnx"))["operating_point_text"]
    assert "of the malignant out-of-fold photos" in page  # the page's line: predict.py's
    assert glob.glob(str(tmp_path / "gradcam" / "*.png"))
    r = run("AItraining.py", "--data-dir", data, "--resume", "--deploy", "refit", "--output", "refit.pth",
            cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert [line for line in fold_lines(r.stdout) if line.startswith("fold")] == []  # the folds were not trained
    refit = model.load_checkpoint(str(tmp_path / "refit.pth"))[1]
    assert refit["folds"]["deployed"] == "refit" and refit["familiarity"]["method"] == "mahalanobis+exposure"
    pooled = folds.out_of_fold(done, folds.plan(2, "refit", *pool_of(data), 42), "distances", 48)
    assert refit["familiarity"]["limit"] == pytest.approx(np.quantile(pooled, 0.99))


def pool_of(data):
    """(labels, lesion/patient groups) of train plus validation, in the order a run with folds pools them."""
    train, val = (splits.split_photos(data, split, model.CLASSES) for split in ("train", "val"))
    return np.concatenate([train[1], val[1]]), folds.groups_of(train[0] + val[0], dataset.read_manifest(data))


# ---------------------------------------------------------------------------- several processes
def torchrun(tmp_path, *flags):
    """AItraining.py under torchrun, two processes on the CPU, on 31 photos (uneven shards)."""
    data = make_split_tree(tmp_path / "data", n=8, splits=("train", "val"), size=32)
    os.remove(sorted(glob.glob(str(tmp_path / "data" / "val" / "benign" / "*")))[0])  # 15 val photos: uneven shards
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            f"--master_port={port}",
            os.path.join(ROOT, "AItraining.py"),
            *map(str, flags),
            "--data-dir",
            data,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env=ENV,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    weights = dict(re.findall(r"rank (\d)/2: final weights (\w+)", r.stdout))
    assert set(weights) == {"0", "1"} and weights["0"] == weights["1"]  # DDP kept the replicas equal
    return r


@pytest.mark.slow
def test_torchrun_two_processes_on_cpu(tmp_path):
    r = torchrun(tmp_path, *FAST, "--epochs", 2)
    assert len(epoch_lines(r.stdout)) == 2  # only rank 0 reports
    m = model.load_checkpoint(str(tmp_path / "skin_model.pth"))[1]["val_metrics"]
    assert m["tn"] + m["fp"] + m["fn"] + m["tp"] == 15  # validation gathered from both ranks, each photo once


@pytest.mark.slow
def test_torchrun_two_processes_train_the_folds_and_the_refit(tmp_path):
    r = torchrun(tmp_path, *FAST[:-2], "--folds", 2, "--epochs", 1, "--deploy", "refit")
    assert [line.split(" |")[0] for line in fold_lines(r.stdout)] == ["fold 1/2 epoch   1", "fold 2/2 epoch   1",
                                                                      "refit epoch   1"]  # fmt: skip
    meta = model.load_checkpoint(str(tmp_path / "skin_model.pth"))[1]
    m = meta["val_metrics"]
    assert m["tn"] + m["fp"] + m["fn"] + m["tp"] == 31 == meta["folds"]["photos"]  # every photo out of fold, once
