"""predict.py with a random-init 64 px EfficientNet-B0 (conftest.make_net: P(malignant) varies across photos):
output format and digits, the stored and overridden threshold, folders, CSV, TTA, Grad-CAM, the at-chance
caution, user mistakes, bad checkpoints (also for export_onnx.py), and the previous output never lost (a
failing write, Ctrl-C, odd file names, named pipes). The ONNX path is in test_onnx.py."""

import csv
import os
import re
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from PIL import Image

import export_onnx
import model
import predict
from conftest import (
    ENV,
    ROOT,
    assert_one_error,
    fingerprint,
    lesion_photo,
    main_fails,
    make_net,
    noise_image,
    png_claiming,
    run,
    save_model,
)
from skinlesion import photos

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # small in-process forwards stay fast on a busy machine


def refuses(argv, capsys, expected):
    """predict.main(argv) stops with one error line and prints nothing on stdout."""
    assert main_fails(predict.main, argv, capsys, expected) == ""


SIZE = 64
LINE = re.compile(
    r"P\(malignant\) = (\d\.\d{3,6}) \(threshold (\d\.\d{3,6})(, mean over 4 flips)?\)"
    r"(: borderline, within 0\.02 of the threshold)?"
)


@pytest.fixture(scope="module")
def net():
    return make_net(SIZE)


@pytest.fixture(scope="module")
def models(net, tmp_path_factory):
    """The same weights with threshold 0.5 and 1 (benign unless P is exactly 1)."""
    folder = tmp_path_factory.mktemp("models")
    return {t: save_model(folder / f"model {t}.pth", net, SIZE, threshold=t) for t in (0.5, 1.0)}


def flip_probabilities(path, checkpoint):
    """P(malignant) of the photo and its horizontal, vertical and double flip, computed here (not with
    model.malignant_probability or model.TTA_FLIPS)."""
    net, meta = model.load_checkpoint(checkpoint)
    x = torch.from_numpy(photos.preprocess(photos.load_image(path), model.meta_data_config(meta)))[None]
    with torch.no_grad():
        return [torch.softmax(net(v), 1)[0, 1].item() for v in (x, x.flip(3), x.flip(2), x.flip(2).flip(3))]


# ---------------------------------------------------------------------------- one photo
def test_one_photo_with_spaces_and_accents(tmp_path, models, capsys):
    """The label, P with its digits, and the Grad-CAM picture beside the photo."""
    photo = lesion_photo(tmp_path / "my photos" / "grain de beauté n°1.jpg")
    predict.main([photo, "--model", models[0.5], "--explain"])
    out, err = capsys.readouterr()
    lines = out.splitlines()
    p = flip_probabilities(photo, models[0.5])[0]
    assert lines[0] == f"Prediction: {'malignant' if p >= 0.5 else 'benign'}"
    match = LINE.fullmatch(lines[1])
    assert match and not match.group(3), lines[1]
    p_text, t_text, near = predict.decision_texts(p, 0.5)
    assert (len(match.group(1)), match.group(2), bool(match.group(4))) == (len(p_text), t_text, bool(near))
    assert abs(float(match.group(1)) - p) <= 0.5 * 10 ** -len(p_text.split(".")[1]) + 1e-6
    cam_png = tmp_path / "my photos" / "grain de beauté n°1_gradcam.png"
    assert lines[2].startswith(f"Grad-CAM saved to {cam_png}")
    with Image.open(cam_png) as img:
        assert img.format == "PNG" and img.width > 2.2 * img.height  # three panels side by side
    assert "not a medical device" in err and "caution:" not in err


@pytest.mark.parametrize(
    "p, threshold, expected",
    [
        (0.73, 0.5, ("0.730", "0.500", "")),
        (0.5004, 0.5, ("0.5004", "0.5000", "borderline")),
        (0.49996, 0.5, ("0.49996", "0.50000", "borderline")),
        (0.5000004, 0.5, ("0.500000", "0.500000", "borderline")),  # 6 digits at most
        (0.5, 0.5, ("0.500000", "0.500000", "borderline")),
        (0.519, 0.5, ("0.519", "0.500", "borderline")),
        (0.521, 0.5, ("0.521", "0.500", "")),
        (0.0004, 0.0, ("0.0004", "0.0000", "borderline")),
        (0.9999, 1.0, ("0.9999", "1.0000", "borderline")),
    ],
)
def test_digits_show_the_side_of_the_threshold(p, threshold, expected):
    assert predict.decision_texts(p, threshold) == expected


def test_printed_p_is_on_the_same_side_as_p():
    rng = np.random.default_rng(0)
    for _ in range(3000):
        t = rng.uniform(0, 1)
        p = float(np.clip(t + rng.choice([-1, 1]) * 10 ** rng.uniform(-5.5, -0.3), 0, 1))  # 3e-6 to 0.5 apart
        p_text, t_text, near = predict.decision_texts(p, t)
        assert 3 <= len(p_text.split(".")[1]) == len(t_text.split(".")[1]) <= 6
        assert (float(p_text) < float(t_text)) == (p < t) and p_text != t_text
        assert abs(float(p_text) - p) <= 0.5 * 10 ** -len(p_text.split(".")[1]) + 1e-12
        assert (near == "borderline") == (abs(p - t) < model.BORDERLINE)


def test_threshold_flag_overrides_the_stored_one(tmp_path, models, capsys):
    photo = lesion_photo(tmp_path / "photo.jpg")
    predict.main([photo, "--model", models[1.0], "--threshold", "0"])
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0] == "Prediction: malignant" and LINE.fullmatch(lines[1]).group(2) == "0.000", lines
    assert "caution:" not in err  # a model not flagged at chance
    predict.main([photo, "--model", models[1.0]])
    assert capsys.readouterr().out.splitlines()[0] == "Prediction: benign"


def test_model_at_chance_prints_one_caution(tmp_path, net, capsys):
    flagged = save_model(tmp_path / "chance.pth", net, SIZE, at_chance=True, val_auc_ci95=[0.45, 0.6])
    predict.main([lesion_photo(tmp_path / "photo.jpg"), "--model", flagged])
    out, err = capsys.readouterr()
    cautions = [line for line in err.splitlines() if line.startswith("caution:")]
    assert cautions == [
        "caution: this model cannot be told from chance (its validation ROC-AUC 95% interval "
        "0.450-0.600 includes 0.5); do not rely on its predictions"
    ]
    assert out.startswith("Prediction: ")


# ---------------------------------------------------------------------------- folders
def test_folder_tta_csv_and_borderline(tmp_path, models, monkeypatch, capsys):
    """Recursive and sorted, one line per photo, the summary with its counts, skipped files named on stderr,
    the CSV, and TTA equal to the mean over the four flips computed here."""
    monkeypatch.chdir(tmp_path)
    photos = ["photos/b.png", "photos/a.jpg", "photos/sub/c.jpg"]
    for seed, (photo, size) in enumerate(zip(photos, [(64, 100), (90, 70), (80, 80)])):
        lesion_photo(photo, size, seed)
    photos.sort()
    (tmp_path / "photos" / "notes.txt").write_text("not a photo")
    noise_image("photos/a_gradcam.png", 9)  # what --explain wrote
    views = {photo: flip_probabilities(photo, models[0.5]) for photo in photos}
    p = {photo: float(np.mean(v)) for photo, v in views.items()}
    assert any(max(v) - min(v) > 1e-3 for v in views.values()), "the flips agree: TTA could not be told apart"
    threshold = round(p["photos/b.png"] + 0.005, 4)  # b.png is borderline
    near = {photo: abs(p[photo] - threshold) < model.BORDERLINE for photo in photos}
    label = {photo: "malignant" if p[photo] >= threshold else "benign" for photo in photos}

    predict.main(["photos", "--model", models[0.5], "--tta", "--csv", "out.csv", "--threshold", str(threshold)])
    out, err = capsys.readouterr()
    lines = out.splitlines()
    for line, photo in zip(lines, photos):
        match = re.fullmatch(
            re.escape(photo) + r": Prediction: (\w+) \(P\(malignant\) = (\d\.\d+)(, borderline)?\)", line
        )
        assert match and match.group(1) == label[photo] and bool(match.group(3)) == near[photo], line
        assert abs(float(match.group(2)) - p[photo]) <= 5e-4
    n = sum(lab == "malignant" for lab in label.values())
    assert lines[3] == (
        f"3 images: {n} malignant, {3 - n} benign (threshold {threshold:.3f}, mean over 4 flips); "
        f"{sum(near.values())} borderline; 2 skipped (listed on stderr)"
    )
    assert lines[4] == "predictions written to out.csv"
    assert "warning: skipped photos/a_gradcam.png: a Grad-CAM picture written by predict.py --explain" in err
    assert "warning: skipped photos/notes.txt: not an image file" in err
    with open("out.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["file", "prediction", "p_malignant", "threshold", "borderline"]
    assert [r[0] for r in rows[1:]] == photos
    for photo, prediction, p_text, t_text, borderline in rows[1:]:
        assert (prediction, t_text, borderline) == (label[photo], f"{threshold:g}", str(near[photo]).lower())
        assert abs(float(p_text) - p[photo]) <= 2e-6


def test_odd_files_in_a_folder(tmp_path, models):
    """Accents and spaces, a decompression bomb, a named pipe called photo.jpg (skipped, nothing hangs), a
    file name that is not UTF-8 (classified, written to the CSV as \\xff text)."""
    folder = tmp_path / "Ärzte Fotos"
    lesion_photo(folder / "läsion 1.jpg", seed=4)
    lesion_photo(folder / "Größe 2.png", seed=5)
    lesion_photo(os.fsdecode(os.path.join(os.fsencode(folder), b"photo\xff.jpg")), seed=6)
    png_claiming(folder / "riesig.png", 20000, 20000)  # 400 MP > model.MAX_IMAGE_PIXELS
    os.makedirs(folder / "sub")
    os.mkfifo(folder / "sub" / "photo.jpg")
    r = run("predict.py", "Ärzte Fotos", "--model", models[0.5], "--csv", "Ergebnisse ü.csv", cwd=tmp_path, timeout=120)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    lines = r.stdout.splitlines()
    names = ["Ärzte Fotos/Größe 2.png", "Ärzte Fotos/läsion 1.jpg", "Ärzte Fotos/photo\\xff.jpg"]
    for line, name in zip(lines, names):
        assert line.startswith(f"{name}: Prediction: "), line
    assert lines[3].startswith("3 images: ") and lines[3].endswith("; 2 skipped (listed on stderr)"), lines[3]
    assert "warning: skipped Ärzte Fotos/riesig.png: not a readable image (DecompressionBomb" in r.stderr
    assert "warning: skipped Ärzte Fotos/sub/photo.jpg: a named pipe" in r.stderr
    with open(tmp_path / "Ergebnisse ü.csv", encoding="utf-8", newline="") as f:
        assert [row[0] for row in csv.reader(f)][1:] == names


# ---------------------------------------------------------------------------- Grad-CAM
def test_explain_says_when_there_is_no_evidence_for_a_class(tmp_path, models, monkeypatch, capsys):
    monkeypatch.setattr(predict, "gradcam", lambda net, x: -np.ones((2, 2), np.float32))  # all for benign
    photo = lesion_photo(tmp_path / "photo.jpg")
    predict.main([photo, "--model", models[0.5], "--explain"])
    assert (
        capsys.readouterr().out.splitlines()[2]
        == f"Grad-CAM saved to {tmp_path / 'photo_gradcam.png'}; it finds no evidence for malignant in this photo"
    )


# ---------------------------------------------------------------------------- mistakes
@pytest.mark.parametrize(
    "case",
    [
        "missing model",
        "missing photo",
        "text named .jpg",
        "empty folder",
        "folder of non-images",
        "nothing readable",
        "threshold 2",
        "threshold -0.1",
        "threshold nan",
    ],
)
def test_user_mistakes_give_one_line(tmp_path, models, monkeypatch, capsys, case):
    monkeypatch.chdir(tmp_path)
    photo = lesion_photo("photo.jpg")
    os.makedirs("empty")
    (tmp_path / "text.jpg").write_text("this is not a JPEG")
    (tmp_path / "junk" / "sub").mkdir(parents=True)
    (tmp_path / "junk" / "notes.txt").write_text("not a photo")
    (tmp_path / "junk" / "sub" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "broken.jpg").write_bytes(b"\xff\xd8\xff truncated")
    (tmp_path / "broken" / "notes.txt").write_text("not a photo")
    (tmp_path / "skin_model.pth").write_bytes(b"not looked at: the folder is checked first")
    good = ["--model", models[0.5]]
    argv, expected = {
        "missing model": ([photo, "--model", "nope.pth"], "model file nope.pth not found; train one with"),
        "missing photo": (["nope.jpg", *good], "nope.jpg not found"),
        "text named .jpg": (["text.jpg", *good], "text.jpg is not a readable image"),
        "empty folder": (["empty", *good], "no images in empty"),
        "folder of non-images": (["junk"], "no images in junk (looked for .jpg"),
        "nothing readable": (["broken", *good], "none of the 2 files could be classified"),
        "threshold 2": ([photo, *good, "--threshold", "2"], "--threshold 2.0: use a probability from 0 to 1"),
        "threshold -0.1": ([photo, *good, "--threshold", "-0.1"], "--threshold -0.1: use a probability"),
        "threshold nan": ([photo, *good, "--threshold", "nan"], "--threshold nan: use a probability"),
    }[case]
    before = fingerprint(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        predict.main(argv)
    out, err = capsys.readouterr()
    assert_one_error(exit_info.value.code, err, expected)
    assert out == "", out
    if case == "folder of non-images":
        assert "skipped 2 other files" in err
    if case == "nothing readable":
        assert "warning: skipped broken/broken.jpg: not a readable image" in err
    assert fingerprint(tmp_path) == before


@pytest.mark.parametrize("case", ["photo", "model"])
def test_named_pipe_passed_directly_is_one_line(tmp_path, models, case):
    """Opening a named pipe would wait forever for a writer: refused from its kind, in a process that is
    killed if it hangs."""
    os.mkfifo(tmp_path / "pipe")
    photo, checkpoint = ("pipe", models[0.5]) if case == "photo" else (lesion_photo(tmp_path / "photo.jpg"), "pipe")
    r = run("predict.py", photo, "--model", checkpoint, cwd=tmp_path, timeout=60)
    assert_one_error(
        r.returncode,
        r.stderr,
        "model file pipe is a named pipe"
        if case == "model"
        else "pipe is a named pipe; pass an image file or a folder of images",
    )
    assert r.stdout == ""


class RunsCode:
    """Unpickling this runs a shell command (touch marker): what a malicious 'checkpoint' does."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


@pytest.fixture(scope="module")
def bad_checkpoints(net, tmp_path_factory):
    """{case: (path, what the error line says after the path)}."""
    folder = tmp_path_factory.mktemp("bad checkpoints")
    cfg = model.data_config(net, SIZE)
    cases = {}

    def save(case, expected, edit=lambda state: None, weights=net, **kw):
        state = model.checkpoint_state(weights, cfg, **kw)
        edit(state)
        path = str(folder / f"{case}.pth")
        model.save_checkpoint(path, state)
        cases[case] = (path, expected)

    def nan_weight(state):
        w = state["state_dict"]["conv_stem.weight"] = state["state_dict"]["conv_stem.weight"].clone()
        w[0, 0, 0, 0] = float("nan")

    save("nan weight", "{} is refused: 1 weight tensor(s) hold NaN or infinite values (conv_stem.weight)", nan_weight)
    for t in (float("nan"), 1.5, -0.1):
        save(f"threshold {t}", f"{{}} is refused: its threshold {t} is not a number from 0 to 1", threshold=t)
    for size in (0, "224"):
        save(
            f"image_size {size!r}",
            f"{{}} is refused: its image_size {size!r} is not a whole number from 32 to 2048",
            lambda state, size=size: state["meta"].update(image_size=size),
        )
    save(
        "3 classes",
        "{} is refused: it is a model for classes ['benign', 'malignant', 'indeterminate']",
        lambda state: state["meta"].update(classes=["benign", "malignant", "indeterminate"]),
    )
    save(
        "3 outputs",
        "{}: the weights do not fit efficientnet_b0 with 2 classes",  # the meta says 2 classes
        weights=model.build_model(pretrained=False, num_classes=3)[0],
    )
    save(
        "missing keys",
        "{} is refused: no mean, threshold in its metadata",
        lambda state: [state["meta"].pop(key) for key in ("mean", "threshold")],
    )
    save("truncated", "{} is not a readable checkpoint")
    with open(cases["truncated"][0], "rb") as f:
        whole = f.read()
    with open(cases["truncated"][0], "wb") as f:
        f.write(whole[: len(whole) // 2])  # a copy cut short
    marker = str(folder / "code ran")
    cases["runs code"] = (str(folder / "runs code.pth"), "refusing to load {}: it contains Python objects")
    torch.save({"state_dict": {}, "meta": {}, "payload": RunsCode(marker)}, cases["runs code"][0])
    cases["no meta"] = (str(folder / "no meta.pth"), "{} is not a checkpoint written by AItraining.py")
    torch.save({"state_dict": net.state_dict()}, cases["no meta"][0])
    cases["missing"] = (str(folder / "nope.pth"), "model file {} not found")
    return cases, marker


BAD = [
    "nan weight",
    "threshold nan",
    "threshold 1.5",
    "threshold -0.1",
    "image_size 0",
    "image_size '224'",
    "3 classes",
    "3 outputs",
    "missing keys",
    "truncated",
    "runs code",
    "no meta",
    "missing",
]


@pytest.mark.parametrize("case", BAD)
def test_bad_checkpoint_is_refused_by_predict_and_export(bad_checkpoints, tmp_path, monkeypatch, capsys, case):
    """One error line naming the file and the fault, no label, no file written, no code run."""
    cases, marker = bad_checkpoints
    path, expected = cases[case]
    monkeypatch.chdir(tmp_path)
    photo = lesion_photo("photo.jpg")
    before = fingerprint(tmp_path)
    refuses([photo, "--model", path], capsys, expected.format(path))
    main_fails(export_onnx.main, ["--model", path], capsys, expected.format(path))
    assert not os.path.exists(marker), "unpickling the checkpoint ran its code"
    assert fingerprint(tmp_path) == before  # no ONNX file, CSV or temporary file appeared


# ---------------------------------------------------------------------------- the previous output is never lost
def test_failing_csv_write_keeps_the_previous_csv(tmp_path, models):
    photo = lesion_photo(tmp_path / "photo.jpg")
    (tmp_path / "out.csv").write_bytes(b"file,prediction\r\nprevious.jpg,benign\r\n")
    before = fingerprint(tmp_path)
    r = run(
        "predict.py", photo, "--model", models[0.5], "--csv", "out.csv", cwd=tmp_path, timeout=300, file_size_limit=40
    )  # the header alone is 50 bytes: the write fails as on a full disk
    assert_one_error(r.returncode, r.stderr, "could not write out.csv (File too large)")
    assert r.stdout.startswith("Prediction: ")
    assert fingerprint(tmp_path) == before  # the old CSV byte-identical, no temporary file left


def test_ctrl_c_while_predicting_a_folder_keeps_the_previous_csv(tmp_path, models):
    for i in range(300):  # ~5 s of work after the first line: time enough to interrupt it
        noise_image(tmp_path / "photos" / f"p{i:03d}.jpg", i, size=(40, 30))
    (tmp_path / "predictions.csv").write_text("previous")
    before = fingerprint(tmp_path)
    p = subprocess.Popen(
        [
            sys.executable,
            os.path.join(ROOT, "predict.py"),
            "photos",
            "--model",
            models[0.5],
            "--csv",
            "predictions.csv",
        ],
        cwd=tmp_path,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        start_new_session=True,
    )
    err = []
    reader = threading.Thread(target=lambda: err.extend(p.stderr))
    reader.start()
    out = p.stdout.readline()  # the first photo's line: the model is loaded and the loop running
    assert "Prediction:" in out and p.poll() is None, out + "".join(err)
    os.killpg(p.pid, signal.SIGINT)  # as Ctrl-C in a terminal: the whole process group
    out += p.stdout.read()
    p.wait(timeout=120)
    reader.join()
    assert p.returncode == 130, "".join(err)
    assert "".join(err).strip() == "interrupted"
    assert out.count("Prediction:") < 300
    assert fingerprint(tmp_path) == before
