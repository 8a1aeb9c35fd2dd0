"""Bad input, interruptions and untrusted files. Every script either counts and names what it skipped, or
stops with one `error:` line and exit code 1; Ctrl-C stops it with one line and exit code 130; never a
traceback; and an output that was there before (dataset/, skin_model.pth, a predictions CSV) is left
byte-identical by a run that fails or is interrupted.

Ctrl-C is sent to the script's whole process group (as a terminal does) once the script has printed its
first line or started writing, i.e. after its imports: a Ctrl-C during Python's start-up and `import torch`
still gets Python's own KeyboardInterrupt traceback."""
import glob
import hashlib
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib

import numpy as np
import onnx
import pandas as pd
import pytest
import timm
import torch
from onnx import TensorProto, helper
from PIL import Image

import AItraining
import evaluate
import export_onnx
import model
import predict
import prepare_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8",
           MPLBACKEND="Agg")
SIZE = 32  # model input in px: all that is tested here is what happens around the network
TRAIN = ["--no-pretrained", "--image-size", str(SIZE), "--batch-size", "8", "--num-workers", "0", "--patience", "0"]


# ---------------------------------------------------------------------------- helpers
def run(script, *args, cwd, timeout=300):
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *map(str, args)], cwd=cwd, env=ENV,
                          capture_output=True, text=True, encoding="utf-8", timeout=timeout)


def assert_one_error(returncode, stderr, expected):
    """Exit 1, no traceback, one `error:` line, the last on stderr, that says `expected`."""
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert returncode == 1 and len(errors) == 1 and stderr.strip().splitlines()[-1] == errors[0], stderr
    assert expected in errors[0], errors[0]


def fingerprint(folder):
    """{relative path: sha256} of every file under folder: equal means byte-identical, file list included."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                out[os.path.relpath(os.path.join(root, name), folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


def interrupt(script, args, cwd, ready, sig=signal.SIGINT, timeout=180):
    """Run script in a process group of its own; once ready(stdout so far) is true, send sig to the whole group
    (as Ctrl-C in a terminal does). Returns (exit code, stdout, stderr)."""
    p = subprocess.Popen([sys.executable, os.path.join(ROOT, script), *map(str, args)], cwd=cwd, env=ENV,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8",
                         start_new_session=True)
    out, err = [], []
    readers = [threading.Thread(target=lambda s=s, into=into: into.extend(iter(s.readline, "")))
               for s, into in ((p.stdout, out), (p.stderr, err))]
    for reader in readers:
        reader.start()
    deadline = time.time() + timeout
    while not ready("".join(out)) and p.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert p.poll() is None, f"finished before it could be interrupted:\n{''.join(out)}{''.join(err)}"
    os.killpg(p.pid, sig)
    p.wait(timeout=120)
    for reader in readers:
        reader.join()
    return p.returncode, "".join(out), "".join(err)


def noise_image(path, seed, size=(48, 40), mode="RGB", **save_args):
    """Random pixels (no two files byte-identical by accident)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(pixels).convert(mode).save(path, **save_args)
    return str(path)


def png_claiming(path, width, height):
    """A valid PNG header for a width x height photo, with almost no pixel data: a decompression bomb's shape."""
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                + chunk(b"IEND", b""))
    return str(path)


def make_split_tree(root, n, splits=("train", "val", "test"), size=SIZE):
    """root/<split>/<class>/ISIC_*.jpg, n per class: bright noise is benign, dark noise malignant."""
    for split in splits:
        for k, c in enumerate(model.CLASSES):
            for i in range(n):
                rng = np.random.default_rng([k, i, len(split)])
                pixels = rng.integers(0, 140 + 100 * (1 - k), (size, size, 3), dtype=np.uint8)
                os.makedirs(os.path.join(root, split, c), exist_ok=True)
                Image.fromarray(pixels).save(os.path.join(root, split, c, f"ISIC_{k}{i:06d}.jpg"))
    with open(os.path.join(root, "manifest.csv"), "w") as f:
        f.write("isic_id,split,label\n")
    return str(root)


def write_export(folder, rows, encoding="utf-8"):
    """metadata.csv as 'isic image download' writes it (isic_id, attribution first), plus an image per row
    whose isic_id is valid; returns the folder."""
    os.makedirs(folder, exist_ok=True)
    df = pd.DataFrame(rows)
    df[["isic_id", "attribution"] + sorted(set(df) - {"isic_id", "attribution"})].to_csv(
        os.path.join(folder, "metadata.csv"), index=False, encoding=encoding)
    for n, row in enumerate(rows):
        if re.fullmatch(prepare_dataset._ISIC_ID, row["isic_id"]):
            noise_image(os.path.join(folder, row["isic_id"] + ".jpg"), n)
    return str(folder)


def export_rows(n, attribution="Anonymous"):
    """n rows alternating Benign/Malignant, without lesion or patient ids."""
    return [dict(isic_id=f"ISIC_{i:07d}", attribution=attribution, image_type="clinical: overview",
                 diagnosis_1=["Benign", "Malignant"][i % 2]) for i in range(n)]


def previous_dataset(folder):
    """A dataset/ as an earlier run left it; returns its fingerprint."""
    os.makedirs(os.path.join(folder, "dataset", "train", "benign"))
    noise_image(os.path.join(folder, "dataset", "train", "benign", "ISIC_0999999.jpg"), 99)
    with open(os.path.join(folder, "dataset", "manifest.csv"), "w") as f:
        f.write("isic_id,split,label\nISIC_0999999,train,benign\n")
    return fingerprint(os.path.join(folder, "dataset"))


class RunsCode:
    """Unpickling this runs a shell command (touch marker): what a malicious 'checkpoint' does."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


# ---------------------------------------------------------------------------- shared files
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A small dataset and checkpoints: a good one, a good resume file, and the bad kinds."""
    folder = tmp_path_factory.mktemp("bad_inputs")
    data = make_split_tree(folder / "dataset", n=4)
    net = model.build_model(pretrained=False)
    cfg = model.data_config(net, SIZE)

    def resume_state(net, **meta):
        state = model.checkpoint_state(net, cfg, threshold=0.5, epoch=1)
        state["meta"].update(meta)
        state.update(optimizer=model.make_optimizer(net).state_dict(), best_auc=0.5, bad_epochs=0, history="[]")
        return state
    ckpt = {name: str(folder / f"{name}.pth") for name in
            ["good", "last", "truncated", "resnet18", "3 classes", "3 outputs", "runs code", "missing"]}
    model.save_checkpoint(ckpt["good"], model.checkpoint_state(net, cfg, threshold=0.5))
    model.save_checkpoint(ckpt["last"], resume_state(net))
    with open(ckpt["last"], "rb") as f:
        whole = f.read()
    with open(ckpt["truncated"], "wb") as f:
        f.write(whole[:len(whole) // 2])  # a copy cut short
    model.save_checkpoint(ckpt["resnet18"], resume_state(timm.create_model("resnet18", num_classes=2)))
    three = model.build_model(pretrained=False, num_classes=3)
    model.save_checkpoint(ckpt["3 classes"], resume_state(three, classes=["benign", "malignant", "indeterminate"]))
    model.save_checkpoint(ckpt["3 outputs"], resume_state(three))  # the meta says 2 classes, the weights 3
    marker = str(folder / "code ran")
    torch.save({"state_dict": {}, "meta": {}, "payload": RunsCode(marker)}, ckpt["runs code"])
    return dict(folder=folder, data=data, ckpt=ckpt, marker=marker)


BAD_CHECKPOINTS = {  # case: what the error line says
    "missing": "not found",
    "truncated": "not a readable checkpoint",
    "resnet18": "the weights do not fit efficientnet_b0",
    "3 classes": "for classes ['benign', 'malignant', 'indeterminate']",
    "3 outputs": "the weights do not fit efficientnet_b0 with 2 classes",
    "runs code": "refusing to load",
}


# ---------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("case", BAD_CHECKPOINTS)
def test_bad_checkpoint_is_refused_by_every_script(files, case, tmp_path, monkeypatch, capsys):
    """predict, evaluate, export_onnx and AItraining --resume, in this process: one error line, exit 1."""
    path, data, photo = files["ckpt"][case], files["data"], noise_image(tmp_path / "photo.jpg", 1)
    monkeypatch.chdir(tmp_path)
    shutil.copyfile(files["ckpt"]["good"], "skin_model.pth")  # the previous best model
    before = fingerprint(tmp_path)
    calls = {
        "predict": lambda: monkeypatch.setattr(sys, "argv", ["predict.py", photo, "--model", path]) or predict.main(),
        "evaluate": lambda: monkeypatch.setattr(sys, "argv", ["evaluate.py", "--model", path, "--data-dir",
                                                              os.path.join(data, "test")]) or evaluate.main(),
        "export_onnx": lambda: monkeypatch.setattr(sys, "argv", ["export_onnx.py", "--model", path])
        or export_onnx.main(),
        "AItraining --resume": lambda: AItraining.main([*TRAIN, "--data-dir", data, "--resume", "--resume-file", path]),
    }
    for script, call in calls.items():
        with pytest.raises(SystemExit) as exit_info:
            call()
        assert exit_info.value.code == 1, script
        assert_one_error(1, capsys.readouterr().err, BAD_CHECKPOINTS[case])
    assert not os.path.exists(files["marker"]), "unpickling the checkpoint ran its code"
    assert fingerprint(tmp_path) == before  # no model, ONNX file, report or half-written file appeared


def test_checkpoint_that_would_run_code_is_refused_on_the_command_line(files, tmp_path):
    shutil.copyfile(files["ckpt"]["good"], tmp_path / "skin_model.pth")
    photo = noise_image(tmp_path / "photo.jpg", 2)
    before = fingerprint(tmp_path)
    r = run("predict.py", photo, "--model", files["ckpt"]["runs code"], cwd=tmp_path)
    assert_one_error(r.returncode, r.stderr, "refusing to load")
    assert not os.path.exists(files["marker"])
    assert fingerprint(tmp_path) == before


def test_resume_from_the_best_model_instead_of_the_resume_file(files, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        AItraining.main([*TRAIN, "--data-dir", files["data"], "--resume", "--resume-file", files["ckpt"]["good"]])
    assert_one_error(1, capsys.readouterr().err, "has no optimiser state; resume from the skin_model_last.pth")


def save_onnx(path, input_type, input_shape, image_size):
    """A tiny ONNX model (mean over all but the batch axis, twice) with predict.py's metadata."""
    nodes = [helper.make_node("Cast", ["x"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("ReduceMean", ["f"], ["y"], axes=[1, 2, 3], keepdims=0),
             helper.make_node("Unsqueeze", ["y", "axes"], ["u"]),
             helper.make_node("Concat", ["u", "u"], ["logits"], axis=1)]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", input_type, input_shape)],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
                              initializer=[helper.make_tensor("axes", TensorProto.INT64, [1], [1])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    proto.ir_version = 8
    meta = dict(classes=model.CLASSES, image_size=image_size, mean=[0.5] * 3, std=[0.5] * 3,
                interpolation="bilinear", crop_pct=0.875, threshold=0.5)
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=json.dumps(value))
    onnx.save(proto, str(path))
    return str(path)


@pytest.mark.parametrize("input_type, shape, expected", [
    (TensorProto.UINT8, ["batch", 3, SIZE, SIZE], "needs one float32 input of shape [batch, 3, size, size]"),
    (TensorProto.FLOAT, ["batch", 3, 48, 48], f"its metadata says {SIZE} px images"),
], ids=["uint8 input", "another size than its metadata"])
def test_onnx_file_whose_input_does_not_match(tmp_path, input_type, shape, expected):
    onnx_file = save_onnx(tmp_path / "model.onnx", input_type, shape, SIZE)
    r = run("predict.py", noise_image(tmp_path / "photo.jpg", 3), "--model", onnx_file, cwd=tmp_path)
    assert_one_error(r.returncode, r.stderr, expected)
    assert r.stdout == ""


# ---------------------------------------------------------------------------- dataset folders
@pytest.mark.parametrize("case, expected", [
    ("a class folder missing", "val has no malignant folder"),
    ("empty split", "val: no images in benign/, malignant/; re-run prepare_dataset.py"),
    ("a third folder", "has the folders ['.ipynb_checkpoints', 'benign', 'malignant']"),
], ids=["a class folder missing", "empty split", "a third folder"])
def test_training_on_a_wrong_dataset_folder(files, case, expected, tmp_path, monkeypatch, capsys):
    data = shutil.copytree(files["data"], tmp_path / "dataset")
    if case == "a class folder missing":
        shutil.rmtree(data / "val" / "malignant")
    elif case == "empty split":
        for path in glob.glob(str(data / "val" / "*" / "*")):
            os.remove(path)
    else:  # Jupyter's hidden folder would shift the class indices: malignant would become class 2
        shutil.copytree(data / "train" / "benign", data / "train" / ".ipynb_checkpoints")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        AItraining.main([*TRAIN, "--data-dir", str(data), "--epochs", "1"])
    assert_one_error(1, capsys.readouterr().err, expected)
    assert not os.path.exists("skin_model.pth")


def test_unreadable_image_in_the_training_set_is_one_line(files, tmp_path):
    data = shutil.copytree(files["data"], tmp_path / "dataset")
    broken = data / "train" / "malignant" / "ISIC_1000001.jpg"
    broken.write_bytes(broken.read_bytes()[:150])  # truncated
    r = run("AItraining.py", *TRAIN, "--data-dir", data, "--epochs", "1", "--num-workers", "1", cwd=tmp_path)
    assert_one_error(r.returncode, r.stderr, f"{broken} is not a readable image")


def test_stray_files_are_counted_and_training_runs(files, tmp_path, monkeypatch, capsys):
    data = shutil.copytree(files["data"], tmp_path / "dataset")
    (data / "train" / "benign" / "notes.txt").write_text("not a photo")
    (data / "train" / "malignant" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (data / "val" / "benign" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    monkeypatch.chdir(tmp_path)
    AItraining.main([*TRAIN, "--data-dir", str(data), "--epochs", "1"])
    out, err = capsys.readouterr()
    assert f"{data / 'train'}: 2 file(s) that are not images skipped" in err
    assert f"{data / 'val'}: 1 file(s) that are not images skipped" in err
    assert "train: 8 images" in out and "epoch   1" in out
    model.load_checkpoint("skin_model.pth")


def test_evaluate_on_an_empty_split_keeps_the_previous_report(files, tmp_path, monkeypatch, capsys):
    for c in model.CLASSES:
        os.makedirs(tmp_path / "val" / c)
    (tmp_path / "evaluation.json").write_text('{"previous": true}')
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["evaluate.py", "--model", files["ckpt"]["good"], "--data-dir", "val"])
    with pytest.raises(SystemExit):
        evaluate.main()
    assert_one_error(1, capsys.readouterr().err, "no images in val/benign and val/malignant")
    assert (tmp_path / "evaluation.json").read_text() == '{"previous": true}'
    assert sorted(os.listdir(tmp_path)) == ["evaluation.json", "val"]


# ---------------------------------------------------------------------------- predict.py
def test_predict_folder_without_images(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "notes.txt").write_text("not a photo")
    (tmp_path / "photos" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (tmp_path / "skin_model.pth").write_bytes(b"not looked at: the folder is checked first")
    r = run("predict.py", "photos", cwd=tmp_path)
    assert_one_error(r.returncode, r.stderr, "no images in photos (looked for .jpg")
    assert "skipped 2 other files" in r.stderr


def test_predict_folder_with_accents_spaces_and_a_decompression_bomb(files, tmp_path):
    folder = tmp_path / "Ärzte Fotos"
    noise_image(folder / "läsion 1.jpg", 4)
    noise_image(folder / "Größe 2.png", 5)
    png_claiming(folder / "riesig.png", 20000, 20000)  # 400 MP > model.MAX_IMAGE_PIXELS
    r = run("predict.py", "Ärzte Fotos", "--model", files["ckpt"]["good"], "--csv", "Ergebnisse ü.csv", cwd=tmp_path)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("Ärzte Fotos/Größe 2.png: Prediction: ")
    assert lines[1].startswith("Ärzte Fotos/läsion 1.jpg: Prediction: ")
    assert lines[2].startswith("2 images: ") and lines[2].endswith("; 1 skipped (listed on stderr)")
    assert "warning: skipped Ärzte Fotos/riesig.png: not a readable image (DecompressionBomb" in r.stderr
    rows = pd.read_csv(tmp_path / "Ergebnisse ü.csv", encoding="utf-8")
    assert list(rows.file) == ["Ärzte Fotos/Größe 2.png", "Ärzte Fotos/läsion 1.jpg"]


# ---------------------------------------------------------------------------- prepare_dataset.py: metadata.csv
METADATA_MISTAKES = {  # case: (extra arguments, what the error line says)
    "missing": ([], "metadata.csv (nor a metadata.csv under isic_images) not found"),
    "empty": ([], "cannot read metadata.csv as CSV (EmptyDataError)"),
    "binary garbage": ([], "metadata.csv holds binary data, not CSV text"),
    "a JPEG renamed": ([], "metadata.csv holds binary data, not CSV text"),
    "no isic_id column": ([], "metadata.csv has no isic_id column"),
    "no label column": ([], "neither diagnosis_1 nor benign_malignant"),
    "unknown --image-types": (["--image-types", "clinical overview"],
                              "unknown image type 'clinical overview'; ISIC image types: 'dermoscopic', "),
}


@pytest.mark.parametrize("case", METADATA_MISTAKES)
def test_metadata_that_cannot_be_used(tmp_path, case):
    args, expected = METADATA_MISTAKES[case]
    before = previous_dataset(tmp_path)
    write_export(tmp_path / "isic_images", export_rows(4))
    os.remove(tmp_path / "isic_images" / "metadata.csv")
    csv = tmp_path / "metadata.csv"
    if case == "empty":
        csv.write_bytes(b"")
    elif case == "binary garbage":
        csv.write_bytes(np.random.default_rng(0).bytes(3000))
    elif case == "a JPEG renamed":
        noise_image(csv, 6, format="JPEG")
    elif case == "no isic_id column":
        pd.DataFrame(export_rows(4)).rename(columns={"isic_id": "id"}).to_csv(csv, index=False)
    elif case in ("no label column", "unknown --image-types"):
        labels = ["diagnosis_1"] if case == "no label column" else []
        pd.DataFrame(export_rows(4)).drop(columns=labels).to_csv(csv, index=False)
    r = run("prepare_dataset.py", "--workers", "1", *args, cwd=tmp_path)
    assert_one_error(r.returncode, r.stderr, expected)
    assert fingerprint(tmp_path / "dataset") == before
    assert glob.glob(str(tmp_path / "dataset*")) == [str(tmp_path / "dataset")]  # no temporary folder left


def test_bad_metadata_rows_are_counted_and_left_out(tmp_path):
    """Windows-1252 bytes, labels that disagree, an unknown image_type spelling, a repeated row, and isic_ids
    that try to leave the folder: read (with a warning), counted, left out; nothing outside is touched."""
    rows = export_rows(8, attribution="Dr. Müller, Universitätsklinik")
    for row in rows:
        row["benign_malignant"] = row["diagnosis_1"].lower()
    rows += [dict(rows[0], isic_id="ISIC_0000020", benign_malignant="malignant"),  # Benign vs malignant
             dict(rows[1], isic_id="ISIC_0000021", image_type="Clinical Overview"),
             dict(rows[2]),  # the same isic_id again
             dict(rows[3], isic_id="../../x"), dict(rows[3], isic_id="/etc/passwd")]
    export = write_export(tmp_path / "isic_images", rows, encoding="cp1252")  # found under isic_images/
    noise_image(tmp_path / "x.jpg", 7)  # where ../../x would point from a sub-folder
    outside = {k: v for k, v in fingerprint(tmp_path).items() if not k.startswith("isic_images")}
    r = run("prepare_dataset.py", "--workers", "1", "--val-fraction", "0", "--test-fraction", "0", cwd=tmp_path)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert "warning: isic_images/metadata.csv is not UTF-8; read it as Windows-1252" in r.stderr
    summary = dict((line[:46].strip(), line[46:]) for line in r.stdout.splitlines() if line.startswith("  "))
    assert summary["rows read"].split() == ["13"]
    assert "left out: Clinical Overview 1" in summary["image_type clinical: overview or overview"]
    assert "left out: conflicting 1" in summary["with a definite label"]
    assert "refused 2: '../../x', '/etc/passwd'" in summary["with a valid isic_id"]
    assert "1 repeated rows kept once" in summary["unique isic_id"]
    m = pd.read_csv(tmp_path / "dataset" / "manifest.csv", dtype=str)
    assert sorted(m.isic_id) == [f"ISIC_{i:07d}" for i in range(8)]
    assert all(os.path.realpath(tmp_path / f).startswith(os.path.realpath(export) + os.sep) for f in m.source_file)
    assert {k: v for k, v in fingerprint(tmp_path).items() if k.split(os.sep)[0] not in ("isic_images", "dataset")} \
        == outside


# ---------------------------------------------------------------------------- prepare_dataset.py: images
def test_bad_images_are_counted_and_odd_ones_converted(tmp_path):
    rows = export_rows(20)
    export = tmp_path / "isic_images"
    write_export(export, rows)
    ids = [row["isic_id"] for row in rows]
    odd = dict(zip(["cmyk", "16-bit", "grey", "rgba", "exif", "huge", "missing", "empty", "truncated", "text",
                    "bomb", "symlink"], ids[8:]))
    path = lambda kind, ext=".jpg": export / (odd[kind] + ext)
    for kind in odd:
        os.remove(path(kind))
    noise_image(path("cmyk"), 1, mode="CMYK")
    Image.fromarray(np.full((40, 48), 32896, np.uint16)).save(path("16-bit", ".png"))  # 16-bit grey, ~50%
    noise_image(path("grey"), 2, mode="L")
    noise_image(path("rgba", ".png"), 3, mode="RGBA")
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated by 90 degrees
    noise_image(path("exif"), 4, size=(80, 40), exif=exif)
    Image.new("L", (12000, 9000), 77).save(path("huge"), quality=50)  # 108 MP, under MAX_IMAGE_PIXELS
    path("empty").write_bytes(b"")
    noise_image(path("truncated"), 5, size=(200, 150))
    path("truncated").write_bytes(path("truncated").read_bytes()[:3000])  # cut short mid-scan
    path("text").write_text("this is not a JPEG")
    png_claiming(path("bomb", ".png"), 20000, 20000)  # 400 MP: over the limit
    os.symlink(noise_image(tmp_path / "outside.jpg", 6), path("symlink"))

    r = run("prepare_dataset.py", "--workers", "2", "--val-fraction", "0", "--test-fraction", "0", cwd=tmp_path)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert f"missing 1: {odd['missing']};" in r.stdout and "refused 1 symlinks pointing out of isic_images" in r.stdout
    unreadable = next(line for line in r.stdout.splitlines() if "unreadable 4: " in line)
    for kind in ["empty", "truncated", "text"]:
        assert odd[kind] in unreadable
    assert f"{odd['bomb']} (DecompressionBombWarning)" in unreadable
    m = pd.read_csv(tmp_path / "dataset" / "manifest.csv", dtype=str).set_index("isic_id")
    kept = ids[:8] + [odd[k] for k in ["cmyk", "16-bit", "grey", "rgba", "exif", "huge"]]
    assert sorted(m.index) == sorted(kept)
    for kind in ["cmyk", "16-bit", "grey", "rgba", "exif", "huge"]:
        with Image.open(tmp_path / "dataset" / m.file[odd[kind]]) as img:
            assert img.format == "JPEG" and img.mode == "RGB", kind
            size, pixels = img.size, np.asarray(img)
        assert size == {"exif": (40, 80), "huge": (341, 256)}.get(kind, (48, 40)), kind
    assert abs(int(pixels.mean()) - 77) <= 2  # the huge one: the same grey, shrunk
    with Image.open(tmp_path / "dataset" / m.file[odd["16-bit"]]) as img:
        assert abs(np.asarray(img).mean() - 128) < 2  # scaled from 16 to 8 bits, not clipped to 255
    os.makedirs(tmp_path / "scratch")
    t = time.time()
    assert not prepare_dataset.process_image((odd["huge"], str(path("huge")), str(tmp_path / "scratch"), 256))["error"]
    assert time.time() - t < 2, "the 12000 px JPEG must be decoded at a reduced scale (Pillow draft): ~0.1 s, not ~4 s"


# ---------------------------------------------------------------------------- interruptions
@pytest.fixture(scope="module")
def big_export(tmp_path_factory):
    """An export that takes a few seconds to prepare: 160 photos of 400 x 300 px."""
    folder = tmp_path_factory.mktemp("big_export")
    rows = export_rows(160)
    pd.DataFrame(rows).to_csv(folder / "metadata.csv", index=False)
    for n, row in enumerate(rows):
        noise_image(folder / (row["isic_id"] + ".jpg"), n, size=(400, 300), quality=90)
    return str(folder)


def decoding_started(folder):
    """ready() for interrupt: prepare_dataset.py has written a photo into its dataset.tmp-<pid> folder."""
    def ready(_):
        tmp = glob.glob(os.path.join(folder, "dataset.tmp-*"))
        return bool(tmp) and bool(os.listdir(tmp[0]))
    return ready


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_prepare_killed_or_interrupted_keeps_the_previous_dataset(big_export, tmp_path, sig):
    before = previous_dataset(tmp_path)
    args = ["--metadata-csv", os.path.join(big_export, "metadata.csv"), "--images-dir", big_export, "--workers", "2"]
    code, out, err = interrupt("prepare_dataset.py", args, tmp_path, decoding_started(str(tmp_path)), sig)
    assert fingerprint(tmp_path / "dataset") == before
    assert "Traceback" not in err
    if sig == signal.SIGKILL:
        assert code == -signal.SIGKILL
        assert glob.glob(str(tmp_path / "dataset.tmp-*"))  # what a kill leaves, for the next run to clean
        r = run("prepare_dataset.py", *args, "--n-per-class", "10", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert sorted(os.listdir(tmp_path)) == ["dataset"]
        assert len(pd.read_csv(tmp_path / "dataset" / "manifest.csv")) == 20
    else:
        assert code == 130 and err.strip().splitlines()[-1] == "interrupted; the previous dataset is untouched"
        assert sorted(os.listdir(tmp_path)) == ["dataset"]


def test_ctrl_c_during_training(files, tmp_path):
    data = make_split_tree(tmp_path / "data", n=64, splits=("train", "val"))
    shutil.copyfile(files["ckpt"]["good"], tmp_path / "skin_model.pth")  # from an earlier run
    before = fingerprint(tmp_path)["skin_model.pth"]
    code, out, err = interrupt("AItraining.py", [*TRAIN, "--data-dir", data, "--epochs", "50", "--num-workers", "1"],
                               tmp_path, lambda out: "train: 128 images" in out)
    assert code == 130 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == \
        "interrupted; skin_model.pth holds the best finished epoch, continue with --resume"
    assert not glob.glob(str(tmp_path / "*.tmp*"))  # no half-written checkpoint
    if "epoch " not in out:  # interrupted in the first epoch: the earlier model untouched
        assert fingerprint(tmp_path)["skin_model.pth"] == before
    model.load_checkpoint(str(tmp_path / "skin_model.pth"))


def test_ctrl_c_while_predicting_a_folder(files, tmp_path):
    for i in range(150):
        noise_image(tmp_path / "photos" / f"p{i:03d}.jpg", i, size=(40, 30))
    (tmp_path / "predictions.csv").write_text("previous")
    code, out, err = interrupt("predict.py", ["photos", "--model", files["ckpt"]["good"], "--csv", "predictions.csv"],
                               tmp_path, lambda out: "Prediction:" in out)
    assert code == 130 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == "interrupted"
    assert (tmp_path / "predictions.csv").read_text() == "previous"
