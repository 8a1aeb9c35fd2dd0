"""predict.py with a random-init 64 px EfficientNet-B0 (conftest.make_net: P(malignant) varies across photos):
output format and digits, the stored and overridden threshold, folders, CSV, TTA, Grad-CAM, the at-chance
caution, user mistakes, bad checkpoints (also for export_onnx.py), and the previous output never lost (a
failing write, Ctrl-C, odd file names, named pipes). The ONNX path is in test_export_onnx.py."""

import csv
import os
import pathlib
import re
import shutil
import signal

import numpy as np
import pytest
import torch
from PIL import Image

import export_onnx
import model
import predict
from conftest import (
    RunsCode,
    assert_one_error,
    direct_familiarity_distance,
    fails,
    fingerprint,
    finish,
    grey_photo,
    lesion_photo,
    main_fails,
    make_net,
    noise_image,
    png_claiming,
    recorded,
    refuses,
    run,
    save_model,
    start,
)
from skinlesion import answer, card, explain, familiarity, files, folders, interrupts, ledger, model_file, photos
from skinlesion.messages import UserError

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # small in-process forwards stay fast on a busy machine


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
    x = torch.from_numpy(photos.preprocess(photos.load_image(path), model_file.meta_data_config(meta)))[None]
    with torch.no_grad():
        return [torch.softmax(net(v), 1)[0, 1].item() for v in (x, x.flip(3), x.flip(2), x.flip(2).flip(3))]


# ---------------------------------------------------------------------------- one photo
def test_one_photo_with_spaces_and_accents(tmp_path, models, monkeypatch, capsys):
    """The label, P with its digits, and the Grad-CAM picture in a folder of its own (gradcam/), named after the
    photo and its extension."""
    monkeypatch.chdir(tmp_path)
    photo = lesion_photo(tmp_path / "my photos" / "grain de beauté n°1.jpg")
    predict.main([photo, "--model", models[0.5], "--explain"])
    out, err = capsys.readouterr()
    lines = out.splitlines()
    p = flip_probabilities(photo, models[0.5])[0]
    assert lines[0] == f"Prediction: {'malignant' if p >= 0.5 else 'benign'}"
    match = LINE.fullmatch(lines[1])
    assert match and not match.group(3), lines[1]
    p_text, t_text, near = answer.decision_texts(p, 0.5, answer.BORDERLINE)
    assert (len(match.group(1)), match.group(2), bool(match.group(4))) == (len(p_text), t_text, bool(near))
    assert abs(float(match.group(1)) - p) <= 0.5 * 10 ** -len(p_text.split(".")[1]) + 1e-6
    cam_png = tmp_path / "gradcam" / "grain de beauté n°1_jpg_gradcam.png"
    assert lines[2].startswith("Grad-CAM saved to gradcam/grain de beauté n°1_jpg_gradcam.png")
    with Image.open(cam_png) as img:
        assert img.format == "PNG" and img.width > 2.2 * img.height  # three panels side by side
    assert "not a medical device" in err and "caution:" not in err


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
    near = {photo: abs(p[photo] - threshold) < answer.BORDERLINE for photo in photos}
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
    assert lines[4].startswith("Model file: ") and lines[5] == "predictions written to out.csv"
    assert "warning: skipped photos/a_gradcam.png: a Grad-CAM picture written by predict.py --explain" in err
    assert "warning: skipped photos/notes.txt: not an image file" in err
    with open("out.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["file", "prediction", "p_malignant", "threshold", "borderline"]
    assert [r[0] for r in rows[1:]] == photos
    for photo, prediction, p_text, t_text, borderline in rows[1:]:
        assert (prediction, t_text, borderline) == (label[photo], f"{threshold:g}", str(near[photo]).lower())
        assert abs(float(p_text) - p[photo]) <= 2e-6


@pytest.mark.slow
def test_odd_files_in_a_folder(tmp_path, models):
    """Accents and spaces, a decompression bomb, a named pipe called photo.jpg (skipped, nothing hangs), a
    file name that is not UTF-8 (classified, written to the CSV as \\xff text)."""
    folder = tmp_path / "Ärzte Fotos"
    lesion_photo(folder / "läsion 1.jpg", seed=4)
    lesion_photo(folder / "Größe 2.png", seed=5)
    lesion_photo(os.fsdecode(os.path.join(os.fsencode(folder), b"photo\xff.jpg")), seed=6)
    png_claiming(folder / "riesig.png", 20000, 20000)  # 400 MP > photos.MAX_IMAGE_PIXELS
    os.makedirs(folder / "sub")
    os.mkfifo(folder / "sub" / "photo.jpg")
    argv = ["Ärzte Fotos", "--model", models[0.5], "--csv", "Ergebnisse ü.csv"]
    r = run("predict.py", *argv, cwd=tmp_path, timeout=120)
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
    monkeypatch.setattr(explain, "gradcam", lambda net, x, mask: -np.ones((2, 2), np.float32))  # all for benign
    photo = lesion_photo(tmp_path / "photo.jpg")
    predict.main([photo, "--model", models[0.5], "--explain", "--explain-dir", str(tmp_path / "maps")])
    lines = capsys.readouterr().out.splitlines()
    p_text = LINE.fullmatch(lines[1]).group(1)
    assert lines[2] == (  # what the map shows, without contradicting P (a borderline P is not 'no evidence')
        f"Grad-CAM saved to {tmp_path / 'maps' / 'photo_jpg_gradcam.png'}; no region of the photo stands out as "
        f"evidence for malignant (P(malignant) = {p_text} is the model's answer for the photo as a whole)"
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
        "threshold 2": ([photo, *good, "--threshold", "2"], "--threshold 2.0: use 0 to 1 (or set THRESHOLD"),
        "threshold -0.1": ([photo, *good, "--threshold", "-0.1"], "--threshold -0.1: use 0 to 1"),
        "threshold nan": ([photo, *good, "--threshold", "nan"], "--threshold nan: use 0 to 1"),
    }[case]
    before = fingerprint(tmp_path)
    status = interrupts.run_script(lambda: predict.main(argv))
    out, err = capsys.readouterr()
    assert_one_error(status, err, expected)
    assert out == "", out
    if case == "folder of non-images":
        assert "skipped 2 other files" in err
    if case == "nothing readable":
        assert "warning: skipped broken/broken.jpg: not a readable image" in err
    assert fingerprint(tmp_path) == before


@pytest.mark.slow
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


@pytest.fixture(scope="module")
def bad_checkpoints(net, tmp_path_factory):
    """{case: (path, what the error line says after the path)}."""
    folder = tmp_path_factory.mktemp("bad checkpoints")
    cfg = model.data_config(net, SIZE)
    cases = {}

    def save(case, expected, edit=lambda state: None, weights=net, **kw):
        state = model_file.checkpoint_state(weights, cfg, **kw)
        edit(state)
        path = str(folder / f"{case}.pth")
        model_file.save_checkpoint(path, state)
        cases[case] = (path, expected)

    def nan_weight(state):
        w = state["state_dict"]["conv_stem.weight"] = state["state_dict"]["conv_stem.weight"].clone()
        w[0, 0, 0, 0] = float("nan")

    save("nan weight", "{} is refused: 1 weight tensor(s) hold NaN or infinite values (conv_stem.weight)", nan_weight)
    for t in (float("nan"), 1.5, -0.1):
        save(
            f"threshold {t}",
            f"{{}} is refused: its threshold {t} is not a number from 0 to 1",
            lambda state, t=t: state["meta"].update(threshold=t),  # checkpoint_state would refuse to write it
        )
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
@pytest.mark.slow
def test_failing_csv_write_keeps_the_previous_csv(tmp_path, models):
    photo = lesion_photo(tmp_path / "photo.jpg")
    (tmp_path / "out.csv").write_bytes(b"file,prediction,p_malignant,threshold,borderline\r\nprevious.jpg,benign\r\n")
    recorded(tmp_path / "out.csv", "predictions")  # a CSV predict.py wrote before
    before = fingerprint(tmp_path, marks=False)
    r = run(
        "predict.py", photo, "--model", models[0.5], "--csv", "out.csv", cwd=tmp_path, timeout=300, file_size_limit=40
    )  # the header alone is 50 bytes: the write fails as on a full disk
    assert_one_error(r.returncode, r.stderr, "could not write out.csv (File too large)")
    assert r.stdout.startswith("Prediction: ")
    assert fingerprint(tmp_path, marks=False) == before  # the old CSV byte-identical, no temporary file left


@pytest.mark.slow
def test_ctrl_c_while_predicting_a_folder_keeps_the_previous_csv(tmp_path, models):
    for i in range(300):  # ~5 s of work after the first line: time enough to interrupt it
        noise_image(tmp_path / "photos" / f"p{i:03d}.jpg", i, size=(40, 30))
    recorded(
        tmp_path / "predictions.csv", "predictions", "file,prediction,p_malignant,threshold,borderline\nprevious.jpg\n"
    )
    before = fingerprint(tmp_path)
    p = start(
        "predict.py", ["photos", "--model", models[0.5], "--csv", "predictions.csv"], lambda p: p.out, cwd=tmp_path
    )
    # the first photo's line: the model is loaded and the loop running
    assert "Prediction:" in p.out[0], "".join(p.out + p.err)
    os.killpg(p.pid, signal.SIGINT)  # as Ctrl-C in a terminal: the whole process group
    code, out, err = finish(p)
    assert code == 130, err
    assert [line for line in err.strip().splitlines() if line and not line.startswith("note: ")] == ["interrupted"]
    assert out.count("Prediction:") < 300
    assert fingerprint(tmp_path) == before


# ---------------------------------------------------------------------------- never touch what isn't ours
@pytest.mark.parametrize(
    "case",
    [
        "csv is the photo",
        "csv is the model",
        "csv not ours",
        "csv is a model of ours",
        "csv is a source file",
        "model none",
        "explain dir in the photos' folder",
    ],
)
def test_outputs_that_are_inputs_or_not_ours_are_refused(tmp_path, models, monkeypatch, capsys, case):
    monkeypatch.chdir(tmp_path)
    photo = lesion_photo("photos/p.jpg")
    shutil.copyfile(models[0.5], "skin_model.pth")
    (tmp_path / "results.csv").write_text("my own spreadsheet\n")
    model_file.save_checkpoint("trained.pth", torch.load(models[0.5], weights_only=True))  # a model of ours, recorded
    source = os.path.join(files.ROOT, "skinlesion", "files.py")
    with open(source, "rb") as f:
        source_bytes = f.read()
    before = fingerprint(tmp_path)
    argv, expected = {
        "csv is the photo": ([photo, "--csv", photo], "--csv photos/p.jpg is also an input (photos/p.jpg)"),
        "csv is the model": ([photo, "--csv", "skin_model.pth"], "--csv skin_model.pth is also an input"),
        "csv not ours": (
            [photo, "--csv", "results.csv"],
            "--csv results.csv exists and was not written by this project",
        ),
        "csv is a model of ours": (  # predict.py photo.jpg --model skin_model.onnx --csv skin_model.pth
            [photo, "--csv", "trained.pth"],
            "--csv trained.pth holds this project's model (this output is its predictions); pass another path",
        ),
        "csv is a source file": (
            [photo, "--csv", source, "--overwrite"],
            f"--csv {source} is one of this project's own files; pass another path",
        ),
        "model none": ([photo, "--model", "none"], "argument --model: none: this flag needs a value"),
        "explain dir in the photos' folder": (
            ["photos", "--explain", "--explain-dir", "photos/maps"],
            "--explain-dir photos/maps: use a folder outside photos (an input)",
        ),
    }[case]
    refuses(argv, capsys, expected)
    assert fingerprint(tmp_path) == before
    with open(source, "rb") as f:
        assert f.read() == source_bytes


def test_explain_never_overwrites_a_users_picture_and_names_each_photo_apart(tmp_path, models, monkeypatch, capsys):
    """lesion.jpg and lesion.png in one folder get two pictures; a user's own photo_gradcam.png beside the photos
    stays byte-identical; a picture in the explain folder that we did not write is refused, not replaced."""
    monkeypatch.chdir(tmp_path)
    lesion_photo("photos/lesion.jpg", seed=1)
    lesion_photo("photos/lesion.png", seed=2)
    noise_image("photos/photo_gradcam.png", 3)  # the user's own file: skipped as an input, never written
    before = fingerprint(tmp_path / "photos")
    predict.main(["photos", "--model", models[0.5], "--explain"])
    assert sorted(os.listdir("gradcam")) == [folders.MARK, "lesion_jpg_gradcam.png", "lesion_png_gradcam.png"]
    assert fingerprint(tmp_path / "photos") == before
    predict.main(["photos", "--model", models[0.5], "--explain"])  # a rerun replaces its own pictures
    capsys.readouterr()
    noise_image("gradcam/lesion_jpg_gradcam.png", 4)  # now a picture we did not write sits where ours would go
    before = fingerprint(tmp_path)
    refuses(
        ["photos", "--model", models[0.5], "--explain"],
        capsys,
        "--explain-dir gradcam/lesion_jpg_gradcam.png was changed since this project wrote it",
    )
    assert fingerprint(tmp_path) == before


@pytest.mark.slow
def test_a_loop_of_links_or_a_link_to_the_root_neither_hangs_nor_leaves_the_folder(tmp_path, models):
    lesion_photo(tmp_path / "photos" / "a.jpg", seed=1)
    lesion_photo(tmp_path / "photos" / "sub" / "b.jpg", seed=2)
    os.symlink(".", tmp_path / "photos" / "again")
    os.symlink("..", tmp_path / "photos" / "sub" / "up")
    os.symlink("a.jpg", tmp_path / "photos" / "a copy.jpg")
    os.symlink("/", tmp_path / "photos" / "root")  # was: every image on the machine classified
    r = run("predict.py", "photos", "--model", models[0.5], cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("Prediction:") == 2 and r.stdout.splitlines()[2].startswith("2 images:")
    assert "warning: skipped photos/root: a link out of photos (pass what it points to directly)\n" in r.stderr


def test_an_image_far_longer_than_wide_is_one_line_and_a_tall_photo_still_classifies(
    tmp_path, models, monkeypatch, capsys
):
    """A 375-byte 100000 x 1 PNG took 2.6 GB and 14 s: now refused from its header, alone or in a folder where
    a photo ten times as tall as wide (the most elongated taken) is classified."""
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (100000, 1), (200, 150, 120)).save("thin.png", optimize=True)
    why = "100000 x 1 pixels, one side over 10 times the other: crop it to the lesion"
    _, err = fails(capsys, f"thin.png is {why}", predict.main, ["thin.png", "--model", models[0.5]])
    assert err == f"error: thin.png is {why}\n"  # not 'pass a .jpg or .png photo': it is one, to be cropped
    pathlib.Path("text.png").write_text("not a photo")  # the nearest file that needs that advice
    _, err = fails(capsys, "text.png is not a readable image", predict.main, ["text.png", "--model", models[0.5]])
    assert err.endswith("; pass a .jpg or .png photo\n")
    os.mkdir("photos")
    os.rename("thin.png", "photos/thin.png")
    noise_image("photos/tall.jpg", 3, size=(40, 400))
    predict.main(["photos", "--model", models[0.5]])
    out, err = capsys.readouterr()
    assert out.startswith("photos/tall.jpg: Prediction: ") and out.count("Prediction:") == 1
    assert f"warning: skipped photos/thin.png: {why}\n" in err


def test_a_rerun_replaces_its_own_csv_but_not_once_it_was_edited(tmp_path, models, monkeypatch, capsys):
    """The nearest thing to 'not ours' that must be accepted: the same command again replaces the CSV it wrote,
    without --overwrite; once the user edited it, it is theirs."""
    monkeypatch.chdir(tmp_path)
    lesion_photo("photos/p.jpg", seed=1)
    argv = ["photos", "--model", models[0.5], "--csv", "out.csv"]
    predict.main(argv)
    assert len(pathlib.Path("out.csv").read_text().splitlines()) == 2
    lesion_photo("photos/q.jpg", seed=2)
    predict.main(argv)  # the same command, a photo more
    assert len(pathlib.Path("out.csv").read_text().splitlines()) == 3
    with open("out.csv", "a") as f:
        f.write("my note\n")
    before = fingerprint(tmp_path)
    capsys.readouterr()
    refuses(argv, capsys, "--csv out.csv was changed since this project wrote it; pass another path, or --overwrite")
    assert fingerprint(tmp_path) == before


def test_odd_names_cannot_forge_a_line_or_a_formula(tmp_path, models, monkeypatch, capsys):
    """A newline in a file name is shown as \\n (it cannot start a 'Prediction:' line); a name that starts like a
    spreadsheet formula is written to the CSV as text."""
    monkeypatch.chdir(tmp_path)
    lesion_photo("photos/=HYPERLINK(1).jpg", seed=1)
    lesion_photo("photos/a\nPrediction: benign.jpg", seed=2)
    lesion_photo("photos/@sum.jpg", seed=3)
    predict.main(["photos", "--model", models[0.5], "--csv", "out.csv"])
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if line.startswith("Prediction:")] == []
    assert "photos/a\\nPrediction: benign.jpg: Prediction: " in out
    with open("out.csv", encoding="utf-8", newline="") as f:
        files_column = [row[0] for row in csv.reader(f)][1:]
    expected = ["photos/=HYPERLINK(1).jpg", "photos/@sum.jpg", "photos/a\\nPrediction: benign.jpg"]
    assert sorted(files_column) == expected  # starting with 'photos/': nothing to quote
    noise_image("formula/=cmd.jpg", 5)
    predict.main(["formula/=cmd.jpg", "--model", models[0.5], "--csv", "formula.csv"])
    with open("formula.csv", encoding="utf-8", newline="") as f:
        assert [row[0] for row in csv.reader(f)][1] == "formula/=cmd.jpg"
    noise_image("=top.jpg", 6)
    predict.main(["=top.jpg", "--model", models[0.5], "--csv", "top.csv"])
    with open("top.csv", encoding="utf-8", newline="") as f:
        assert [row[0] for row in csv.reader(f)][1] == "'=top.jpg"


def test_paths_given_as_flags_cannot_forge_a_line(tmp_path, models, monkeypatch, capsys):
    """A --csv path holding a newline printed 'predictions written to out' and then a forged 'Prediction: benign'
    line; a folder or a model file so named did the same in the error line."""
    monkeypatch.chdir(tmp_path)
    photo, forged = lesion_photo("photo.jpg"), "out\nPrediction: benign"
    predict.main([photo, "--model", models[0.5], "--csv", f"{forged}.csv"])
    out = capsys.readouterr().out
    assert len([line for line in out.splitlines() if line.startswith("Prediction:")]) == 1  # the photo's own
    assert "\npredictions written to out\\nPrediction: benign.csv\n" in out and os.path.isfile(f"{forged}.csv")
    os.mkdir(forged)
    refuses([forged, "--model", models[0.5]], capsys, "no images in out\\nPrediction: benign (looked for")
    refuses([photo, "--model", f"{forged}.pth"], capsys, "model file out\\nPrediction: benign.pth not found")


@pytest.mark.parametrize("size", [(1, 1), (90, 10)])  # (more than 10:1 is refused: test_photos)
def test_a_photo_too_small_or_too_elongated_gets_a_warning(tmp_path, models, capsys, size):
    photo = noise_image(tmp_path / "odd.png", 1, size=size)
    predict.main([photo, "--model", models[0.5]])
    out, err = capsys.readouterr()
    assert out.startswith("Prediction: ")
    assert f"warning: {photo} is {size[0]} x {size[1]} px: far too small or too elongated to show a lesion" in err


# ---------------------------------------------------------------------------- what the numbers mean
def test_the_operating_point_is_said_in_words_and_a_useless_one_is_flagged(tmp_path, net, capsys):
    op = dict(
        target_sensitivity=0.9,
        threshold=0.2,
        sensitivity=0.9,
        sensitivity_ci95=[0.81, 0.96],
        specificity=0.1,
        specificity_ci95=[0.05, 0.16],
    )
    path = save_model(tmp_path / "m.pth", net, SIZE, threshold=0.2, operating_point=op)
    predict.main([lesion_photo(tmp_path / "photo.jpg"), "--model", path])
    out, err = capsys.readouterr()
    assert (
        "Operating point: at this threshold the model caught 90% [81-96%] of the malignant validation photos and "
        "cleared 10% [5-16%] of the benign ones (brackets: 95% intervals)."
    ) in out
    assert "caution: this threshold calls almost every photo malignant (it cleared only 10% of benign)" in err


def test_prevalence_reweights_p_and_gives_ppv_and_npv_by_bayes_rule(tmp_path, net, capsys):
    """A model trained on 50% malignant photos, used where 5% are: P's odds times (0.05 / 0.95) / (0.5 / 0.5), and
    the calls' PPV and NPV from the validation sensitivity 0.9 and specificity 0.6 at the threshold, by hand."""
    op = dict(target_sensitivity=0.9, threshold=0.5, sensitivity=0.9, sensitivity_ci95=[0.8, 0.97])
    op.update(specificity=0.6, specificity_ci95=[0.5, 0.7])
    path = save_model(tmp_path / "m.pth", net, SIZE, threshold=0.5, operating_point=op, prior_malignant=0.5)
    photo = lesion_photo(tmp_path / "photo.jpg")
    predict.main([photo, "--model", path, "--prevalence", "0.05", "--csv", str(tmp_path / "p.csv")])
    lines = capsys.readouterr().out.splitlines()
    with open(tmp_path / "p.csv", encoding="utf-8", newline="") as f:
        p = float(list(csv.reader(f))[1][2])
    odds = p / (1 - p) * (0.05 / 0.95)
    assert lines[2] == f"At a prevalence of 5.0%: P(malignant) = {odds / (1 + odds):.3f} (the call above uses P)"
    assert "Note: P(malignant) assumes about 50% of photos are malignant, as in the training photos." in lines
    assert not any("pass --prevalence" in line for line in lines)  # the hint is not repeated to who gave it
    tp, fp, tn, fn = 0.9 * 0.05, 0.4 * 0.95, 0.6 * 0.95, 0.1 * 0.05
    assert (
        "Prevalence: at a prevalence of 5.0%, from the validation sensitivity and specificity at this threshold, a "
        f"'malignant' call is right {tp / (tp + fp):.0%} of the time (PPV) and a 'benign' call "
        f"{tn / (tn + fn):.0%} of the time (NPV)."
    ) in lines
    predict.main([photo, "--model", path, "--prevalence", "0.0001"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].startswith("At a prevalence of 0.01%: P(malignant) = ")  # not 0.0%
    assert any(line.startswith("Prevalence: at a prevalence of 0.01%, ") for line in lines)
    predict.main([photo, "--model", path])
    assert (
        "Note: P(malignant) assumes about 50% of photos are malignant, as in the training photos; where they are "
        "rarer or more common, pass --prevalence (e.g. --prevalence 0.05)."
    ) in capsys.readouterr().out.splitlines()
    with pytest.raises(UserError, match="--prevalence"):
        predict.main([photo, "--model", path, "--prevalence", "1"])


def test_ppv_and_npv_come_from_the_test_figures_with_the_validation_ones_beside(tmp_path, net, capsys):
    """Where evaluate.py put this model's test results in its card, PPV and NPV at --prevalence come from the test
    sensitivity (0.8) and specificity (0.3), labelled, with the validation ones (0.9, 0.6) beside them; by hand.
    The card of another model file (its SHA-256 differs) is not used."""
    op = dict(target_sensitivity=0.9, threshold=0.5, sensitivity=0.9, sensitivity_ci95=[0.8, 0.97])
    op.update(specificity=0.6, specificity_ci95=[0.5, 0.7])
    path = save_model(tmp_path / "m.pth", net, SIZE, threshold=0.5, operating_point=op, prior_malignant=0.5)
    _, meta = model.load_checkpoint(path)
    metrics = dict(sensitivity=0.8, specificity=0.3, roc_auc=0.7)
    test = dict(data_dir="dataset/test", n_images={"benign": 30, "malignant": 30}, metrics=metrics,
                ci95=dict(sensitivity=[0.6, 0.95], specificity=[0.15, 0.5], roc_auc=[0.55, 0.85]))  # fmt: skip
    photo = lesion_photo(tmp_path / "photo.jpg")

    def ppv_npv(sensitivity, specificity):
        tp, fp = sensitivity * 0.05, (1 - specificity) * 0.95
        tn, fn = specificity * 0.95, (1 - sensitivity) * 0.05
        return f"{tp / (tp + fp):.0%}", f"{tn / (tn + fn):.0%}"

    for sha256, tested in ((files.file_sha256(path), True), ("ab" * 32, False)):
        card.write_card(str(tmp_path / "m.md"), meta, "m.pth", test, None, sha256)
        predict.main([photo, "--model", path, "--prevalence", "0.05"])
        lines = capsys.readouterr().out.splitlines()
        line = next(line for line in lines if line.startswith("Prevalence: "))
        (test_ppv, test_npv), (val_ppv, val_npv) = ppv_npv(0.8, 0.3), ppv_npv(0.9, 0.6)
        from_validation = (
            f"from the validation sensitivity and specificity at this threshold, a 'malignant' call is right {val_ppv} "
            f"of the time (PPV) and a 'benign' call {val_npv} of the time (NPV)."
        )
        from_test = (
            f"at a prevalence of 5.0%, from the test sensitivity and specificity at this threshold, a 'malignant' "
            f"call is right {test_ppv} of the time (PPV) and a 'benign' call {test_npv} of the time (NPV); "
        )
        assert line == "Prevalence: " + (from_test if tested else "at a prevalence of 5.0%, ") + from_validation
        assert any(line.startswith("Tested: on the test photos") for line in lines) == tested


def test_a_weak_model_and_tta_with_a_threshold_chosen_without_it_are_said(tmp_path, net, capsys):
    op = dict(target_sensitivity=0.9, threshold=0.5, sensitivity=0.9, sensitivity_ci95=[0.8, 0.97])
    op.update(specificity=0.27, specificity_ci95=[0.15, 0.4])
    path = save_model(tmp_path / "m.pth", net, SIZE, threshold=0.5, operating_point=op, val_auc_ci95=[0.62, 0.8])
    predict.main([lesion_photo(tmp_path / "photo.jpg"), "--model", path, "--tta"])
    err = capsys.readouterr().err
    assert (
        "caution: this model is weak: at its threshold it cleared only 27% of benign validation photos and its "
        "validation ROC-AUC may be as low as 0.62 (lower end of the 95% interval)"
    ) in err
    assert "caution: --tta averages over flips, but the threshold and calibration were chosen without them" in err


# ---------------------------------------------------------------------------- lesion types
@pytest.fixture(scope="module")
def types_model(tmp_path_factory):
    """A random-init 4-class model, 2 of its types malignant, with a calibration."""
    folder = tmp_path_factory.mktemp("types")
    net = make_net(SIZE, classes=4)
    classes = ["nevus", "seborrheic_keratosis", "basal_cell_carcinoma", "melanoma_invasive"]
    return save_model(
        folder / "types.pth",
        net,
        SIZE,
        threshold=0.5,
        classes=classes,
        malignant_classes=classes[2:],
        calibration=dict(
            method="platt",
            a=0.8,
            b=-0.3,
            val_log_loss_before=0.6,
            val_log_loss_after=0.5,
            val_ece_before=0.1,
            val_ece_after=0.05,
            applies_to="logits",
        ),  # fmt: skip
        class_names=["Nevus", "Seborrheic keratosis", "Basal cell carcinoma", "Melanoma Invasive"],
    )


def test_a_type_model_names_the_type_and_p_is_the_sum_over_the_malignant_types(tmp_path, types_model, capsys):
    """One calibrated distribution, softmax(0.8 * logits - 0.3 * malignant) computed here by hand: the types
    printed, the CSV's p_<class> columns and P(malignant) are its numbers, and the malignant types add up to P
    (torch and the ONNX export alike)."""
    photo = lesion_photo(tmp_path / "photo.jpg", (120, 100), seed=3)
    predict.main([photo, "--model", types_model, "--csv", str(tmp_path / "out.csv")])
    lines = capsys.readouterr().out.splitlines()
    net, meta = model.load_checkpoint(types_model)
    x = torch.from_numpy(photos.preprocess(photos.load_image(photo), model_file.meta_data_config(meta)))[None]
    with torch.no_grad():
        logits = net(x)[0].double().numpy()
    e = np.exp(0.8 * logits - 0.3 * np.array([0, 0, 1, 1]))
    probs = e / e.sum()
    p = probs[2:].sum()
    assert lines[0] == f"Prediction: {'malignant' if p >= 0.5 else 'benign'}"
    assert abs(float(LINE.fullmatch(lines[1]).group(1)) - p) < 1e-3
    order = np.argsort(-probs)
    names = meta["class_names"]
    assert lines[2] == (
        f"Type: {names[order[0]]} (P = {probs[order[0]]:.3f}); next: {names[order[1]]} (P = "
        f"{probs[order[1]]:.3f}), {names[order[2]]} (P = {probs[order[2]]:.3f})"
    )
    assert lines[3] == (
        f"Malignant types (they add up to P(malignant)): {names[2]} {probs[2]:.3f} + {names[3]} {probs[3]:.3f} = "
        f"{p:.3f}"
    )
    with open(tmp_path / "out.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    classes = meta["classes"]
    assert rows[0] == ["file", "prediction", "p_malignant", "threshold", "borderline", "type", "p_type"] + [
        f"p_{c}" for c in classes
    ]
    assert rows[1][5] == names[order[0]] and abs(float(rows[1][6]) - probs[order[0]]) < 1e-5
    np.testing.assert_allclose([float(v) for v in rows[1][7:]], probs, atol=1e-6)
    assert abs(float(rows[1][9]) + float(rows[1][10]) - float(rows[1][2])) < 2e-6  # the sum, in the CSV itself
    predict.main([photo, "--model", types_model, "--csv", str(tmp_path / "out.csv")])  # its own CSV: replaced
    capsys.readouterr()


# ---------------------------------------------------------------------------- photos unlike the training photos
def test_an_unfamiliar_photo_gets_no_answer_one_line_why_and_exit_status_3(familiar_model, tmp_path):
    """A flat grey photo, to a small model trained on lesion photos: 'Prediction: unfamiliar', the line that says
    why with the distance computed here, no P, exit status 3; --show-unfamiliar adds the answer, marked unreliable.
    One of the model's own test photos gets its ordinary answer (exit 0)."""
    checkpoint, data = familiar_model
    grey = grey_photo(tmp_path / "grey.png")
    (distance,), found = direct_familiarity_distance(checkpoint, [grey])
    assert distance > 2 * found["limit"]
    r = run("predict.py", grey, "--model", checkpoint, cwd=tmp_path)
    lines = r.stdout.splitlines()
    assert r.returncode == predict.UNFAMILIAR_EXIT == 3, r.stdout + r.stderr
    assert lines[0] == "Prediction: unfamiliar"
    assert lines[1] == (
        "the photo does not look like the training photos the model learned from (familiarity distance "
        f"{distance:.2f}, limit {found['limit']:.2f}): no benign/malignant answer (--show-unfamiliar shows it "
        "anyway, unreliable)"
    )  # make_split_tree's manifest records no image type: 'training photos'
    assert "P(malignant)" not in r.stdout and "benign" not in lines[0] + lines[1].replace("benign/malignant", "")
    r = run("predict.py", grey, "--model", checkpoint, "--show-unfamiliar", cwd=tmp_path)
    lines = r.stdout.splitlines()
    assert r.returncode == 3 and lines[0] == "Prediction: unfamiliar"
    assert lines[1].endswith("; the answer below is unreliable")
    assert re.fullmatch(r"Unreliable answer: (benign|malignant)", lines[2])
    assert lines[3].startswith(answer.UNRELIABLE + "P(malignant) = ")  # each line of the answer marked
    own = os.path.join(data, "test", "benign", sorted(os.listdir(os.path.join(data, "test", "benign")))[0])
    r = run("predict.py", own, "--model", checkpoint, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.splitlines()[0] in ("Prediction: benign", "Prediction: malignant")


def test_in_a_folder_the_unfamiliar_photo_is_a_line_a_csv_row_and_a_count(familiar_model, tmp_path, capsys):
    """The grey photo among the model's own test photos: its line and CSV row say unfamiliar (no P), the CSV holds
    every photo's distance (as computed here) and the limit, the summary counts it, and at most 5% of the
    model's own test photos are flagged."""
    checkpoint, data = familiar_model
    folder = tmp_path / "photos"
    shutil.copytree(os.path.join(data, "test"), folder)
    grey = grey_photo(folder / "grey.png")
    predict.main([str(folder), "--model", checkpoint, "--csv", str(tmp_path / "p.csv")])
    out = capsys.readouterr().out
    with open(tmp_path / "p.csv", newline="") as f:
        rows = {row["file"]: row for row in csv.DictReader(f)}
    assert list(next(iter(rows.values())))[-2:] == ["familiarity_distance", "familiarity_limit"]
    distances, found = direct_familiarity_distance(checkpoint, list(rows))
    assert np.allclose([float(row["familiarity_distance"]) for row in rows.values()], distances, rtol=1e-4)
    assert all(float(row["familiarity_limit"]) == pytest.approx(found["limit"], abs=1e-4) for row in rows.values())
    assert rows[grey]["prediction"] == "unfamiliar" and rows[grey]["p_malignant"] == ""
    flagged = [path for path, row in rows.items() if row["prediction"] == "unfamiliar"]
    own = len(rows) - 1
    assert grey in flagged and len(flagged) - 1 <= 0.05 * own, flagged
    assert f"{grey}: Prediction: unfamiliar (familiarity distance" in out
    n = len(flagged)
    assert re.search(rf"{len(rows)} images: \d+ malignant, \d+ benign, {n} unfamiliar \(unlike the training", out)
    assert ledger.why_not_ours(str(tmp_path / "p.csv"), "predictions") is None  # a rerun may replace it


def test_the_limit_holds_99_percent_of_the_validation_photos(familiar_model):
    """The stored limit is the 99th percentile of the validation photos' distances, computed here."""
    checkpoint, data = familiar_model
    val = [os.path.join(root, name) for root, _, names in os.walk(os.path.join(data, "val")) for name in names]
    distances, found = direct_familiarity_distance(checkpoint, sorted(val))
    assert found["limit"] == pytest.approx(np.quantile(distances, 0.99), rel=1e-4)
    assert found["n_val"] == len(val) and np.mean(distances <= found["limit"] * (1 + 1e-6)) >= 0.97
    assert found["val_within"] == pytest.approx(np.mean(distances <= found["limit"]), abs=1 / len(val))
    assert familiarity.unfamiliar(found["limit"] * 1.001, {"familiarity": found})


# ---------------------------------------------------------------------------- what is withheld stays withheld
def measured_model(path, net, limit, classes=None, **meta):
    """A model file with a familiarity measure whose distance is the length of a photo's features (class means 0,
    floor 1, no other direction): limit 0 makes every photo unfamiliar, a huge one none."""
    found = dict(method="mahalanobis", limit=limit, quantile=0.99, val_within=0.98, n_val=50, image_types=["x"])
    if classes:
        meta.update(classes=classes, malignant_classes=classes[2:])
    op = dict(target_sensitivity=0.9, threshold=0.5, sensitivity=0.9, sensitivity_ci95=[0.8, 0.97])
    op.update(specificity=0.6, specificity_ci95=[0.5, 0.7])
    path = save_model(path, net, SIZE, familiarity=found, operating_point=op, prior_malignant=0.5, **meta)
    ckpt = torch.load(path, weights_only=True)
    features = familiarity.feature_count(net)
    means, whitening = np.zeros((len(classes or "ab"), features)), np.zeros((features, 1))
    ckpt["familiarity"] = familiarity.state(dict(means=means, whitening=whitening, floor=1.0))
    torch.save(ckpt, path)
    return path


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """{(classes, limit): model file}: two-class and four-type models, every photo unfamiliar (limit 0) or none."""
    folder = tmp_path_factory.mktemp("measured")
    types = ["nevus", "seborrheic_keratosis", "basal_cell_carcinoma", "melanoma_invasive"]
    found = {}
    for classes in (2, 4):
        net = make_net(SIZE, classes=classes)
        for limit in (0.0, 1e9):
            name = folder / f"m{classes}_{limit:g}.pth"
            found[classes, limit] = measured_model(name, net, limit, types if classes == 4 else None)
    return found


ANSWER = ("P(malignant) = ", "At a prevalence of ", "Type: ", "Malignant types ", "Prevalence: ")


@pytest.mark.parametrize("classes", [2, 4])
def test_an_unfamiliar_photo_shows_no_p_prevalence_ppv_type_or_grad_cam_until_asked(
    tmp_path, measured, classes, capsys
):
    """Issue 29 §3: for an unfamiliar photo no P, no prevalence line, no PPV or NPV, no type, no Grad-CAM, with
    --prevalence and --explain given; with --show-unfamiliar each of those lines is there and marked unreliable,
    and the Grad-CAM is saved. A familiar photo's lines are the same, unmarked."""
    photo = lesion_photo(tmp_path / "photo.jpg")
    maps = tmp_path / "maps"
    flags = ["--prevalence", "0.05", "--explain", "--explain-dir", str(maps)]
    status = predict.main([photo, "--model", measured[classes, 0.0], *flags])
    lines = capsys.readouterr().out.splitlines()
    assert status == predict.UNFAMILIAR_EXIT and lines[0] == "Prediction: unfamiliar"
    assert lines[2].startswith("no Grad-CAM for ") and not maps.exists()
    assert not any(line.startswith(ANSWER + ("Unreliable", "Operating point", "Note", "Tested")) for line in lines)
    assert not any(word in " ".join(lines) for word in ("PPV", "NPV", "prevalence of", "Type"))
    shown_status = predict.main([photo, "--model", measured[classes, 0.0], *flags, "--show-unfamiliar"])
    assert shown_status == predict.UNFAMILIAR_EXIT
    shown = capsys.readouterr().out.splitlines()
    assert predict.main([photo, "--model", measured[classes, 1e9], *flags]) is None  # the same photo, familiar to it
    familiar = capsys.readouterr().out.splitlines()
    answered = [line for line in familiar if line.startswith(ANSWER)]
    assert len(answered) == (5 if classes == 4 else 3), familiar
    assert [answer.UNRELIABLE + line for line in answered] == [
        line for line in shown if line.startswith(tuple(answer.UNRELIABLE + start for start in ANSWER))
    ]
    assert not any(line.startswith(ANSWER) for line in shown)  # each one marked
    assert (maps / "photo_jpg_gradcam.png").is_file()
    assert any(line.startswith(f"Grad-CAM saved to {maps}") for line in shown)


def test_in_a_folder_and_its_csv_an_unfamiliar_photo_has_no_p_or_type_until_asked(tmp_path, measured, capsys):
    """A types model, two photos, all unfamiliar: their lines and CSV rows say unfamiliar, with no P, type or
    class probabilities; --show-unfamiliar fills them in, the line saying unreliable."""
    folder = tmp_path / "photos"
    for seed in range(2):
        lesion_photo(folder / f"p{seed}.jpg", seed=seed)
    for asked in (False, True):
        argv = [
            str(folder),
            "--model",
            measured[4, 0.0],
            "--csv",
            str(tmp_path / f"{asked}.csv"),
            "--prevalence",
            "0.1",
        ]
        predict.main(argv + (["--show-unfamiliar"] if asked else []))
        out = capsys.readouterr().out
        with open(tmp_path / f"{asked}.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert [row["prediction"] for row in rows] == ["unfamiliar", "unfamiliar"]
        filled = [row[key] != "" for row in rows for key in ("p_malignant", "type", "p_type", "p_nevus")]
        assert filled == [asked] * len(filled)
        assert out.count("Prediction: unfamiliar") == 2 and ("unreliable answer: " in out) == asked
        assert "at prevalence" not in out and "; type " not in out


def test_class_names_read_from_the_model_file_are_printed_on_one_line():
    """The malignant types' line printed the class names read from the model file raw (a model file's own check
    refuses such names: this is the second guard, as for every text read from a file)."""
    meta = dict(
        classes=["nevus", "mel"], class_names=["nevus", "melanoma\nPrediction: benign"], malignant_classes=["mel"]
    )
    text = predict.malignant_sum_text(np.array([0.25, 0.75]), meta)
    assert text == "melanoma\\nPrediction: benign 0.750 = 0.750"


def test_a_folder_run_with_an_unfamiliar_photo_exits_0_and_counts_it_where_that_photo_alone_exits_3(tmp_path, capsys):
    """A measure whose distance is the length of a photo's features, its limit halfway between two photos': the
    folder of both (the unfamiliar one listed last), the folder of the unfamiliar one alone, and the two passed as
    files each exit 0 and count it; that photo passed alone exits UNFAMILIAR_EXIT (the nearest that must). Kills
    `if strange:` (the last photo's decision) or `single = len(images) == 1` (a folder of one photo is not a photo
    passed alone) in predict.main: a script checking a folder's exit status would read 3 as 'this photo'."""
    net = make_net(SIZE)
    measuring = tmp_path / "measuring"
    photos_ = [lesion_photo(measuring / "lesion.jpg", seed=1), grey_photo(measuring / "grey.png")]
    predict.main(
        [str(measuring), "--model", measured_model(tmp_path / "all.pth", net, 1e9), "--csv", str(tmp_path / "d.csv")]
    )
    with open(tmp_path / "d.csv", newline="") as f:
        found = {row["file"]: float(row["familiarity_distance"]) for row in csv.DictReader(f)}
    near, far = sorted(photos_, key=found.get)
    assert found[near] < found[far]
    limit = (found[near] + found[far]) / 2
    folder, alone = tmp_path / "both", tmp_path / "alone"
    for target in (folder, alone):
        os.makedirs(target)
    familiar, strange = str(folder / f"a{os.path.splitext(near)[1]}"), str(folder / f"z{os.path.splitext(far)[1]}")
    shutil.copyfile(near, familiar)
    shutil.copyfile(far, strange)
    shutil.copyfile(far, alone / os.path.basename(strange))
    path = measured_model(tmp_path / "m.pth", net, limit)
    capsys.readouterr()
    for argv, summary, named in (
        ([str(folder)], "2 images: ", strange),
        ([str(alone)], "1 images: 0 malignant, 0 benign, 1 unfamiliar", str(alone / os.path.basename(strange))),
        ([familiar, strange], "2 images: ", strange),
    ):
        assert predict.main([*argv, "--model", path]) in (None, 0)  # exit status 0
        out = capsys.readouterr().out
        assert summary in out and ", 1 unfamiliar (unlike the training photos: no answer)" in out, out
        assert f"{named}: Prediction: unfamiliar" in out and f"{familiar}: Prediction: unfamiliar" not in out
    assert predict.main([strange, "--model", path]) == predict.UNFAMILIAR_EXIT == 3
    assert capsys.readouterr().out.splitlines()[0] == "Prediction: unfamiliar"
