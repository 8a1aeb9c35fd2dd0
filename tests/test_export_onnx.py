"""export_onnx.py and predict.py's onnxruntime path with a random-init 64 px EfficientNet-B0
(conftest.make_net): one checked file with metadata, a dynamic batch and the evidence map; the same P and
map as PyTorch; no torch import; bad ONNX files refused; a non-finite probability is an error, never a
label; the export's own mistakes, temporaries and failed checks. Bad checkpoints: test_predict.py."""

import csv
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

import evaluate
import export_onnx
import model
import predict
from conftest import (
    ENV,
    alarm,
    assert_one_error,
    changed_output,
    dead_run,
    direct_familiarity_distance,
    fingerprint,
    grey_photo,
    lesion_photo,
    main_fails,
    recorded,
    refuses,
    run,
    save_model,
    set_self_check,
)
from skinlesion import (
    backbone,
    card,
    explain,
    familiarity,
    files,
    interrupts,
    ledger,
    model_file,
    onnx_file,
    photos,
)
from skinlesion.messages import UserError

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # small in-process forwards stay fast on a busy machine


SIZE = 64
PHOTO_SIZES = [(90, 70), (64, 100), (80, 80), (301, 203), (40, 30)]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A checkpoint, photos of several sizes, and the ONNX file `python export_onnx.py` made of them into a
    folder where a killed export (a dead pid) and a running one (this process) left their temporary files."""
    folder = tmp_path_factory.mktemp("onnx")
    checkpoint = save_model(
        folder / "skin_model.pth",
        size=SIZE,
        threshold=0.37,
        at_chance=False,
        val_metrics={"roc_auc": 0.71},
        val_auc_ci95=[0.55, 0.85],
        epoch=3,
    )
    photos = [lesion_photo(folder / "photos" / f"p{i}.jpg", size, seed=i) for i, size in enumerate(PHOTO_SIZES)]
    out = folder / "out"
    out.mkdir()
    dead = dead_run()  # its pid is not running any more: what a SIGKILLed export leaves
    temporaries = {
        "dead": out / f"skin model.onnx.tmp{dead['pid']}",
        "live": out / f"skin model.onnx.tmp{os.getpid()}",
        "unrecorded": out / "skin model.onnx.tmp99999",  # a user's file of that name: no record, left alone
    }
    for kind, path in temporaries.items():
        path.write_bytes(b"half an ONNX file from a " + kind.encode() + b" export")
    with ledger.updated(str(out)) as data:  # what the export runs recorded when they began writing
        data["pending"].update({temporaries["dead"].name: dead, temporaries["live"].name: ledger.this_run()})
    r = run(
        "export_onnx.py",
        "--model",
        "skin_model.pth",
        "--output",
        "out/skin model.onnx",
        "--check-images",
        "photos",
        cwd=folder,
    )
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stdout + r.stderr
    return dict(
        folder=folder,
        checkpoint=checkpoint,
        onnx=str(out / "skin model.onnx"),
        photos=photos,
        stdout=r.stdout,
        temporaries=temporaries,
    )


@pytest.fixture(scope="module")
def torch_net(exported):
    return model.load_checkpoint(exported["checkpoint"])


# ---------------------------------------------------------------------------- the export
@pytest.mark.slow
def test_export_writes_one_checked_file_with_metadata(exported):
    match = re.search(
        r"^onnxruntime matches PyTorch: largest difference (\S+) in the logits, P\(malignant\) and the evidence map "
        r"\(--tolerance 1e-04\) on 5 photos from photos, batch of 5 and of 1$",
        exported["stdout"],
        re.M,
    )
    assert match and float(match.group(1)) <= 1e-4, exported["stdout"]
    assert re.search(
        r"^wrote out/skin model.onnx \(\d+\.\d MB, onnx.checker passed, opset 18, input 'image' "
        r"\[batch, 3, 64, 64\], outputs 'logits' \[batch, 2\], 'p_malignant' \[batch\] and 'cam' \[batch, 2, 2\]\)$",
        exported["stdout"],
        re.M,
    ), exported["stdout"]
    onnx.checker.check_model(exported["onnx"], full_check=True)
    proto = onnx.load(exported["onnx"], load_external_data=False)
    assert not any(
        t.HasField("data_location") and t.data_location == TensorProto.EXTERNAL for t in proto.graph.initializer
    )  # the weights are inside the file

    def dims(value):
        assert value.type.tensor_type.elem_type == TensorProto.FLOAT, value.name
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    (image,), (logits, p_malignant, cam) = proto.graph.input, proto.graph.output
    assert (image.name, logits.name, p_malignant.name, cam.name) == ("image", "logits", "p_malignant", "cam")
    batch = dims(image)[0]
    assert isinstance(batch, str) and batch  # a named, dynamic batch axis
    assert (dims(image), dims(logits), dims(p_malignant), dims(cam)) == (
        [batch, 3, SIZE, SIZE],
        [batch, 2],
        [batch],
        [batch, SIZE // 32, SIZE // 32],
    )

    props = {p.key: json.loads(p.value) for p in proto.metadata_props}
    meta = model_file.read_checkpoint(exported["checkpoint"])["meta"]
    copied = [key for key in meta if model_file.KEYS[key].onnx == "copied"]
    assert {"classes", "image_size", "threshold", "val_metrics", "epoch"} <= set(copied)
    for key in copied:
        assert props[key] == meta[key], key
    written = {key for key, row in model_file.KEYS.items() if row.onnx == "export"} - {"quantised"}  # (an int8 twin's)
    assert set(props) == set(copied) | written  # nothing else: the card carries settings and data
    assert (props["threshold"], props["val_auc_ci95"], props["classes"]) == (0.37, [0.55, 0.85], model.CLASSES)
    assert props["source_checkpoint"] == "skin_model.pth" and props["outputs"] == ["logits", "p_malignant", "cam"]
    assert props["written_by"] == files.TAG and {"trained_on", "how_well", "intended_use", "limits"} <= set(
        props["card_summary"]
    )
    with open(exported["checkpoint"], "rb") as f:
        assert props["source_sha256"] == hashlib.sha256(f.read()).hexdigest()


@pytest.mark.slow
def test_export_removes_temporaries_of_killed_exports_only(exported):
    """One file written, no .data beside it; the dead export's temporary removed (its record says a run that is
    over wrote it), the running one's kept, a file of that name without a record left alone and named."""
    assert sorted(os.listdir(os.path.dirname(exported["onnx"]))) == [
        ledger.NAME,
        "skin model.onnx",
        exported["temporaries"]["live"].name,
        "skin model.onnx.tmp99999",
    ]
    assert exported["temporaries"]["live"].read_bytes() == b"half an ONNX file from a live export"
    assert exported["temporaries"]["unrecorded"].read_bytes() == b"half an ONNX file from a unrecorded export"
    assert "skin model.onnx.tmp99999 alone: no record says a run of ours left it" in exported["stdout"]


@pytest.mark.slow
def test_onnxruntime_matches_torch_batch_and_single(exported, torch_net):
    net, meta = torch_net
    cfg = model_file.meta_data_config(meta)
    batch = np.stack([photos.preprocess(photos.load_image(p), cfg) for p in exported["photos"]])
    session = ort.InferenceSession(exported["onnx"], providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"image": batch})[0]
    singles = np.concatenate([session.run(["logits"], {"image": batch[i : i + 1]})[0] for i in range(len(batch))])
    assert logits.shape == (len(PHOTO_SIZES), 2)
    np.testing.assert_allclose(logits, singles, atol=1e-5)
    p_torch = model.predictions(model.view_logits(net, torch.from_numpy(batch)), meta)[0]
    p_alone = [
        model.predictions(model.view_logits(net, torch.from_numpy(batch[i : i + 1])), meta)[0][0]
        for i in range(len(batch))
    ]
    p_file = session.run(["p_malignant"], {"image": batch})[0]
    assert np.abs(model.predictions([logits], meta)[0] - p_torch).max() <= 1e-4
    assert np.abs(model.predictions([singles], meta)[0] - p_alone).max() <= 1e-4
    assert np.abs(p_file - p_torch).max() <= 1e-4  # the file's own calibrated P
    assert p_torch.max() - p_torch.min() > 0.01, "all photos get the same probability: the parity check would be empty"


@pytest.mark.slow
def test_onnx_cam_is_gradcam_times_the_map_area(exported, torch_net):
    """EfficientNet's head is global-average-pool + linear, so each channel's mean gradient is its classifier
    weight difference / (h*w): the file's map is predict.gradcam's signed map times h*w."""
    net, meta = torch_net
    cfg = model_file.meta_data_config(meta)
    session = ort.InferenceSession(exported["onnx"], providers=["CPUExecutionProvider"])
    for photo in exported["photos"]:
        x = photos.preprocess(photos.load_image(photo), cfg)[None]
        cam = session.run(["cam"], {"image": x})[0][0]
        grad_cam = explain.gradcam(net, torch.from_numpy(x), model.malignant_mask(meta))
        h, w = grad_cam.shape
        assert cam.shape == (h, w) == (SIZE // 32, SIZE // 32)
        np.testing.assert_allclose(cam, grad_cam * h * w, atol=1e-4 * np.abs(cam).max())


# ---------------------------------------------------------------------------- predict.py with the ONNX file
@pytest.mark.slow
def test_predict_with_onnx_matches_torch_and_never_imports_torch(exported, tmp_path, monkeypatch, capsys):
    """A fresh process runs predict.py's ONNX path (one photo with --explain, then the folder with --tta and a
    CSV) and checks that torch, timm and torchvision were never imported; here the same runs with the .pth."""
    photo = str(shutil.copyfile(exported["photos"][0], tmp_path / "a photo.jpg"))
    folder = os.path.dirname(exported["photos"][0])

    def runs(model_path, csv_file):
        return [
            [photo, "--model", model_path, "--explain"],
            [folder, "--model", model_path, "--tta", "--csv", csv_file],
        ]

    code = "\n".join(
        ["import sys", "import predict"]
        + [f"predict.main({argv!r})" for argv in runs(exported["onnx"], "onnx.csv")]
        + [
            "loaded = {'torch', 'timm', 'torchvision'} & set(sys.modules)",
            "assert not loaded, f'the ONNX path imported {loaded}'",
        ]
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=ENV,
        timeout=300,
    )
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    with_onnx = r.stdout.splitlines()
    assert with_onnx[2].startswith("Grad-CAM saved to gradcam/a photo_jpg_gradcam.png")
    with Image.open(tmp_path / "gradcam" / "a photo_jpg_gradcam.png") as img:
        assert img.format == "PNG" and img.width > 2.2 * img.height  # three panels

    monkeypatch.chdir(tmp_path)
    for argv in runs(exported["checkpoint"], "torch.csv"):
        predict.main(argv)
    with_torch = capsys.readouterr().out.splitlines()
    assert with_onnx[0] == with_torch[0] and with_onnx[0].startswith("Prediction: ")
    printed = [
        re.match(r"P\(malignant\) = (\d\.(\d+)) \(threshold 0\.370", lines[1]) for lines in (with_onnx, with_torch)
    ]
    assert all(printed), (with_onnx[1], with_torch[1])  # the threshold from the file's metadata
    assert abs(float(printed[0].group(1)) - float(printed[1].group(1))) <= 1.01 * 10 ** -len(printed[1].group(2))
    assert with_torch[2].startswith("Grad-CAM saved to ")
    tables = []
    for name in ("onnx", "torch"):
        with open(tmp_path / f"{name}.csv", encoding="utf-8", newline="") as f:
            tables.append(list(csv.DictReader(f)))
    assert [row["file"] for row in tables[0]] == [row["file"] for row in tables[1]] == sorted(exported["photos"])
    for onnx_row, torch_row in zip(*tables):
        assert onnx_row["prediction"] == torch_row["prediction"]
        assert abs(float(onnx_row["p_malignant"]) - float(torch_row["p_malignant"])) <= 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("size, side", [(32, 1), (48, 2)])
def test_every_image_size_in_the_range_exports_and_predicts(tmp_path, monkeypatch, capsys, size, side):
    """--image-size 48 is in the range AItraining.py takes, but the ONNX file's evidence map is 2 x 2 there
    (ceil(48 / 32), EfficientNet's five stride-2 stages) and the check wanted 48 // 32 = 1: predict.py and the
    page refused what export_onnx.py wrote. The smallest size, 32, and 48 now go from training to a label."""
    monkeypatch.chdir(tmp_path)
    assert model_file.IMAGE_SIZES[0] == 32 and backbone.cam_side(size) == side
    save_model("m.pth", size=size)
    lesion_photo("photos/a.jpg", (90, 70))
    export_onnx.main(["--model", "m.pth", "--output", "m.onnx", "--check-images", "photos"])
    assert f"'cam' [batch, {side}, {side}])" in capsys.readouterr().out
    session, meta = model.load_onnx("m.onnx")
    assert meta["image_size"] == size and session.get_outputs()[2].shape[1:] == [side, side]
    answers = []
    for model_path in ["m.onnx", "m.pth"]:
        predict.main(["photos/a.jpg", "--model", model_path])
        answers.append(capsys.readouterr().out.splitlines()[:2])
    assert answers[0][0].startswith("Prediction: ") and answers[0] == answers[1]
    assert [backbone.cam_side(n) for n in (33, 64, 100, 224, 240, 2048)] == [2, 2, 4, 7, 8, 64]


@pytest.mark.slow
def test_onnx_file_renamed_pth_is_recognised_by_its_content(exported, tmp_path, capsys):
    renamed = str(shutil.copyfile(exported["onnx"], tmp_path / "skin_model.pth"))
    photo = exported["photos"][1]
    predict.main([photo, "--model", exported["onnx"]])
    as_onnx = capsys.readouterr().out.replace(exported["onnx"], "MODEL")  # the 'Model file:' line names it
    predict.main([photo, "--model", renamed])
    assert capsys.readouterr().out.replace(renamed, "MODEL") == as_onnx and as_onnx.startswith("Prediction: ")
    # the scripts that need a PyTorch checkpoint say what the file is instead of 'could run code'
    expected = f"{renamed} is an ONNX model, not a PyTorch checkpoint"
    for c in model.CLASSES:
        os.makedirs(tmp_path / "data" / c)
        shutil.copyfile(photo, tmp_path / "data" / c / "photo.jpg")
    main_fails(evaluate.main, ["--model", renamed, "--data-dir", str(tmp_path / "data")], capsys, expected)
    main_fails(export_onnx.main, ["--model", renamed, "--output", str(tmp_path / "again.onnx")], capsys, expected)


# ---------------------------------------------------------------------------- bad ONNX files
def tiny_onnx(
    path, input_type=TensorProto.FLOAT, shape=("batch", 3, SIZE, SIZE), output="logits", scale=1.0, metadata=True, **raw
):
    """A tiny ONNX model built with onnx.helper (exporting a network would take seconds and prove nothing
    more): logits = [0, log(mean of the input * scale)], so P(malignant) = m / (1 + m) for an input whose
    mean m is > 0, and NaN for one whose mean is < 0 (with mean = std = 0.5 in its metadata: a dark photo).
    Valid metadata, unless metadata=False (none) or raw gives values as the raw strings to store."""
    nodes = [
        helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["f", "scale"], ["s"]),
        helper.make_node("ReduceMean", ["s"], ["m"], axes=list(range(1, len(shape))), keepdims=0),
        helper.make_node("Unsqueeze", ["m", "one"], ["u"]),
        helper.make_node("Sub", ["u", "u"], ["zero"]),
        helper.make_node("Log", ["u"], ["log"]),
        helper.make_node("Concat", ["zero", "log"], [output], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("image", input_type, list(shape))],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["batch", 2])],
        initializer=[
            helper.make_tensor("scale", TensorProto.FLOAT, [1], [scale]),
            helper.make_tensor("one", TensorProto.INT64, [1], [1]),
        ],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    proto.ir_version = 8
    meta = (
        dict(
            classes=model.CLASSES,
            image_size=SIZE,
            mean=[0.5] * 3,
            std=[0.5] * 3,
            interpolation="bilinear",
            crop_pct=0.875,
            threshold=0.5,
            network=dict(architecture="efficientnet_b0", features=1280, stride=32, convs=81),
        )
        if metadata
        else {}
    )
    for key, value in dict({k: json.dumps(v) for k, v in meta.items()}, **raw).items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(path))
    return str(path)


BAD_ONNX = {  # case: (tiny_onnx arguments, or None for a text file; the error line, {} the path)
    "another graph": (dict(), "{} is refused: its graph is not efficientnet_b0 with 2 classes (81 convolutions, a"),
    "threshold NaN": (dict(threshold="NaN"), "{} is refused: its threshold nan is not a number from 0 to 1"),
    "threshold 2": (dict(threshold="2"), "{} is refused: its threshold 2 is not a number from 0 to 1"),
    "metadata not JSON": (dict(classes="[benign, malignant]"), "{} is refused: its metadata is not valid JSON"),
    "metadata nested too deeply": (  # a RecursionError traceback
        dict(classes="[" * 100_000 + "]" * 100_000),
        "{} is refused: its metadata is JSON nested too deeply to read",
    ),
    "no metadata": (
        dict(metadata=False),
        "{} is refused: no classes, image_size, mean, std, interpolation, crop_pct, threshold in its metadata",
    ),
    "NaN initializer": (dict(scale=float("nan")), "{} is refused: its weight scale holds NaN or infinite values"),
    "not ONNX": (None, "{} is not a readable ONNX model"),
}


@pytest.mark.parametrize("case", BAD_ONNX)
def test_bad_onnx_file_is_refused(tmp_path, capsys, case):
    build, expected = BAD_ONNX[case]
    path = str(tmp_path / "model.onnx")
    if build is None:
        (tmp_path / "model.onnx").write_text("not a model")
    else:
        tiny_onnx(path, **build)
    photo = lesion_photo(tmp_path / "photo.jpg")
    before = fingerprint(tmp_path)
    refuses([photo, "--model", path], capsys, expected.format(path))
    assert fingerprint(tmp_path) == before


def test_an_onnx_file_whose_weights_are_in_another_file_is_refused_and_that_file_never_opened(tmp_path, capsys):
    """onnx.load read the weights an ONNX file names as external data from whatever file beside it has that name
    (onnx's own check refused a named pipe there as 'not a readable ONNX model (ValidationError)'). export_onnx.py
    writes one self-contained file: a file with external data is refused for what it is, and the file it names
    is never opened (a named pipe would wait for a writer)."""
    path = tiny_onnx(tmp_path / "model.onnx")
    proto = onnx.load(path)
    for tensor in proto.graph.initializer:  # as raw bytes: only those are moved out
        tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor), tensor.name))
    onnx.save(proto, path, save_as_external_data=True, location="weights.bin", size_threshold=0)
    os.remove(tmp_path / "weights.bin")
    os.mkfifo(tmp_path / "weights.bin")  # opening it would wait for a writer for ever
    photo = lesion_photo(tmp_path / "photo.jpg")
    with alarm(60, "the ONNX file's external data was opened"):
        refuses([photo, "--model", path], capsys, f"{path} is refused: it keeps its weights in files of their own")


@pytest.mark.slow
@pytest.mark.parametrize("case", ["an output renamed", "no cam", "3 classes in the metadata"])
def test_our_export_with_other_outputs_or_classes_is_refused(exported, tmp_path, capsys, case):
    """The architecture is ours, but what the file gives is not what its metadata promises."""
    proto = onnx.load(exported["onnx"])
    if case == "an output renamed":
        proto.graph.output[1].name = "probability"
        for node in proto.graph.node:
            node.output[:] = ["probability" if name == "p_malignant" else name for name in node.output]
        expected = "its outputs (shapes after the batch) are {'logits': [2], 'probability': [], 'cam': [2, 2]}, not"
    elif case == "no cam":
        del proto.graph.output[2]
        expected = "its outputs (shapes after the batch) are {'logits': [2], 'p_malignant': []}, not"
    else:
        del proto.metadata_props[:]
        meta = dict(
            model_file.read_checkpoint(exported["checkpoint"])["meta"],
            classes=["benign", "malignant", "nevus"],
            malignant_classes=["malignant"],
        )
        for key, value in meta.items():
            proto.metadata_props.add(key=key, value=json.dumps(value))
        expected = "its graph is not efficientnet_b0 with 3 classes"
    path = str(tmp_path / "model.onnx")
    onnx.save(proto, path)
    refuses([exported["photos"][0], "--model", path], capsys, f"{path} is refused: {expected}")


def test_the_test_results_come_from_evaluation_json_of_this_very_model(exported, tmp_path):
    """export_onnx.py carries evaluate.py's test ROC-AUC into the file's card summary when evaluation.json beside
    the checkpoint names its SHA-256; one of another model (or not JSON) is not used."""
    checkpoint = tmp_path / "skin_model.pth"
    shutil.copyfile(exported["checkpoint"], checkpoint)
    meta = model_file.read_checkpoint(str(checkpoint))["meta"]
    evaluation = dict(metrics=dict(roc_auc=0.8123, sensitivity=0.9, specificity=0.5), ci95=dict(roc_auc=[0.7, 0.9]))

    def how_well(sha256):
        (tmp_path / "evaluation.json").write_text(json.dumps(dict(evaluation, model_sha256=sha256)))
        props = export_onnx.onnx_metadata(meta, str(checkpoint), files.file_sha256(str(checkpoint)), {})
        return json.loads(props["card_summary"])["how_well"]

    assert "ROC-AUC 0.81 [0.70-0.90] (brackets: 95% intervals)" in how_well(files.file_sha256(str(checkpoint)))
    assert "(test" not in how_well("ab" * 32)  # the evaluation of another model file
    evaluation["external_validation"] = "clinic B"  # evaluate.py --external's: not the test figures
    assert "on the test photos" not in how_well(files.file_sha256(str(checkpoint)))
    del evaluation["external_validation"]
    (tmp_path / "evaluation.json").write_text("{not json")
    props = export_onnx.onnx_metadata(meta, str(checkpoint), files.file_sha256(str(checkpoint)), {})
    assert "(test" not in json.loads(props["card_summary"])["how_well"]


@pytest.mark.parametrize("kind", ["a named pipe", "a link to /dev/zero", "nested too deeply", "a folder", "as written"])
def test_an_evaluation_json_that_is_not_a_file_of_results_is_named_and_never_read_without_end(tmp_path, capsys, kind):
    """evaluation.json beside the checkpoint is read as a regular file within a bound: a named pipe or a link to
    /dev/zero is said in one note and left unread (they were skipped without a word), JSON nested too deeply is a
    note (it was a RecursionError traceback); the card's test results are used instead. The nearest accepted:
    evaluate.py's file of this model."""
    checkpoint = tmp_path / "skin_model.pth"
    checkpoint.write_bytes(b"the model's bytes")
    path = tmp_path / "evaluation.json"
    said = {
        "a named pipe": "is a named pipe, not a regular file",
        "a link to /dev/zero": "is a device, not a regular file",
        "nested too deeply": "is JSON nested too deeply to read",
        "a folder": "is a folder, not a regular file",
    }
    written = dict(model_sha256=files.file_sha256(str(checkpoint)), metrics=dict(roc_auc=0.8))
    if kind == "a named pipe":
        os.mkfifo(path)
    elif kind == "a link to /dev/zero":
        os.symlink("/dev/zero", path)
    elif kind == "nested too deeply":
        path.write_text("[" * 100_000 + "]" * 100_000)
    elif kind == "a folder":
        path.mkdir()
    else:
        path.write_text(json.dumps(written))
    with alarm(60, "evaluation.json was read without end"):
        found = export_onnx.evaluation_of(str(checkpoint), files.file_sha256(str(checkpoint)))
    out = capsys.readouterr().out
    if kind == "as written":
        assert found == written and out == ""
    else:
        assert found is None
        assert out == f"note: {path} {said[kind]}: the test results are taken from the model card where it holds them\n"


def rewired(proto):
    """proto with its p_malignant computed by a colour rule (sigmoid of the mean red of the photo) in four added
    nodes; its metadata, shapes, weights and convolutions untouched."""
    for node in proto.graph.node:
        node.output[:] = ["p_original" if name == "p_malignant" else name for name in node.output]
    proto.graph.initializer.append(numpy_helper.from_array(np.array(0, dtype=np.int64), "red"))
    proto.graph.node.extend(
        [
            helper.make_node("GlobalAveragePool", ["image"], ["mean_colour"]),
            helper.make_node("Flatten", ["mean_colour"], ["colours"]),
            helper.make_node("Gather", ["colours", "red"], ["mean_red"], axis=1),
            helper.make_node("Sigmoid", ["mean_red"], ["p_malignant"]),
        ]
    )
    return proto


@pytest.mark.parametrize("case", ["p_malignant rewired", "self_check altered", "as exported"])
def test_a_file_whose_outputs_are_not_what_it_was_exported_with_is_refused(exported, tmp_path, capsys, case):
    """The load check runs the file on onnx_file.check_inputs: its p_malignant must be what its own logits and
    calibration give, and its outputs those stored at export. A file changed either way gives no label; the file
    as exported loads and predicts."""
    proto = onnx.load(exported["onnx"])
    convs = sum(node.op_type == "Conv" for node in proto.graph.node)
    if case == "p_malignant rewired":
        proto = rewired(proto)
        expected = "its p_malignant is not what its logits and calibration give"
    elif case == "self_check altered":
        prop = next(p for p in proto.metadata_props if p.key == "self_check")
        stored = json.loads(prop.value)
        stored["logits"][1][0] += 0.05  # the second check input
        prop.value = json.dumps(stored)
        expected = "its outputs on the check inputs are not those stored when it was exported (logits)"
    assert sum(node.op_type == "Conv" for node in proto.graph.node) == convs == 81  # B0's
    path = str(tmp_path / "model.onnx")
    onnx.save(proto, path)
    photo = exported["photos"][0]
    if case == "as exported":
        predict.main([photo, "--model", path])
        out = capsys.readouterr().out
        with open(path, "rb") as f:  # predict.py names the model file's SHA-256, to compare with the published one
            sha256 = hashlib.sha256(f.read()).hexdigest()
        assert out.startswith("Prediction: ") and f"Model file: {path}, SHA-256 {sha256} (compare" in out
        return
    before = fingerprint(tmp_path)
    refuses([photo, "--model", path], capsys, f"{path} is refused: {expected}")
    assert fingerprint(tmp_path) == before


def test_check_inputs_are_the_same_on_every_call_and_stored_with_the_export(exported):
    x = onnx_file.check_inputs(64)
    assert x.shape == (3, 3, 64, 64) and x.dtype == np.float32 and np.array_equal(x, onnx_file.check_inputs(64))
    assert 0.5 < x.std() < 1.5 and len({round(float(v), 3) for v in x[:, 0, 0, :3].ravel()}) > 3  # varied
    props = {p.key: json.loads(p.value) for p in onnx.load(exported["onnx"], load_external_data=False).metadata_props}
    session, meta = model.load_onnx(exported["onnx"])
    logits, p = session.run(["logits", "p_malignant"], {"image": x})
    np.testing.assert_allclose(props["self_check"]["logits"], logits, atol=1e-4 * max(1, np.abs(logits).max()))
    np.testing.assert_allclose(props["self_check"]["p_malignant"], p, atol=1e-5)
    np.testing.assert_allclose(p, model.predictions([logits], meta)[0], atol=1e-5)


def one_cell(side, value):
    """A [side, side] map that is value in its first cell, 0 elsewhere."""
    cell = np.zeros((side, side))
    cell[0, 0] = value
    return cell


def stored_self_check(path):
    return json.loads(next(p.value for p in onnx.load(path).metadata_props if p.key == "self_check"))


CAM_CASES = ["cam off in one cell", "cam NaN in one cell", "cam off at a batch of 1", "cam off at a batch over 1"]


def cam_changed(path, case, scale, side):
    """The file at path with its cam changed as case says, scale its largest value (what the checks are relative
    to): in one cell by 2.5 x CHECK_DRIFT of it, NaN in one cell, or everywhere by its whole scale at one batch size."""
    if case == "cam off in one cell":
        return changed_output(path, "cam", one_cell(side, 2.5 * onnx_file.DRIFT * scale))
    if case == "cam NaN in one cell":
        return changed_output(path, "cam", one_cell(side, np.nan))
    return changed_output(path, "cam", np.full((side, side), scale), batch=case.split("batch ")[1])


@pytest.mark.parametrize("case", [*CAM_CASES, "no cam stored", "as exported"])
def test_the_self_check_compares_every_output_by_its_largest_difference_at_two_batch_sizes(
    exported, tmp_path, capsys, case
):
    """load_onnx runs the file on the check inputs at once and the first alone and compares the map too: a change in
    one cell of it (whose mean over the maps stays within the check: computed here), a NaN in one cell, a change at
    one batch size only, or a self_check without the map (an earlier version) is refused by load_onnx and
    predict.py; the file as exported loads."""
    path = str(tmp_path / "model.onnx")
    shutil.copyfile(exported["onnx"], path)
    stored = np.array(stored_self_check(path)["cam"])
    scale = np.abs(stored).max(axis=(1, 2)).min()  # the smallest input's largest value: each is relative to its own
    if case == "as exported":
        _, meta = model.load_onnx(path)
        assert set(meta["self_check"]) == {"inputs", "logits", "p_malignant", "cam"} and stored.shape == (3, 2, 2)
        return
    expected = "its outputs on the check inputs are not those stored when it was exported (cam)"
    if case == "no cam stored":
        set_self_check(path, drop=["cam"])
        expected = "its self_check holds no cam (exported by an earlier version)"
    else:
        cam_changed(path, case, scale, stored.shape[-1])
    if case == "cam off in one cell":
        relative = one_cell(2, 2.5 * onnx_file.DRIFT * scale) / np.abs(stored).max(axis=(1, 2), keepdims=True)
        assert relative.mean() < onnx_file.DRIFT < relative.max()  # a mean would let it through
    before = fingerprint(tmp_path)
    refuses([exported["photos"][0], "--model", path], capsys, f"{path} is refused: {expected}; export the model again")
    assert model.read_onnx(path)[2] == f"{path} is refused: {expected}; export the model again with export_onnx.py"
    assert fingerprint(tmp_path) == before


@pytest.fixture(scope="module")
def wrapped_net(torch_net):
    """(export_onnx.exportable of the exported checkpoint, its meta), as export_onnx.py builds them."""
    net, meta = torch_net
    meta = dict(meta, network=backbone.network_shape(net))
    return export_onnx.exportable(net.float().to(memory_format=torch.contiguous_format).eval(), meta), meta


@pytest.mark.slow
@pytest.mark.parametrize("photos_", ["5 photos", "one photo"])
@pytest.mark.parametrize("case", [*CAM_CASES, "as exported"])
def test_the_export_check_compares_every_output_by_its_largest_difference_at_two_batch_sizes(
    exported, wrapped_net, tmp_path, capsys, case, photos_
):
    """export_onnx.py's check against PyTorch on real photos, at once and the first alone (one photo: twice over and
    alone): a change in one cell of the map by 2.5 x the tolerance (relative to the map's largest value: its mean over
    the maps is within), a NaN in one cell (Python's max([0.1, nan]) is 0.1), or a change at one batch size only is
    found, and the error names the output, its largest difference and --tolerance; the file as exported passes."""
    wrapped, meta = wrapped_net
    cfg = model_file.meta_data_config(meta)
    x = np.stack([photos.preprocess(photos.load_image(p), cfg) for p in exported["photos"]])
    x = x[:1] if photos_ == "one photo" else x
    with torch.inference_mode():
        cam = wrapped(torch.from_numpy(x))[2].double().numpy()
    scale = np.abs(cam).max()
    path = str(tmp_path / "model.onnx")
    shutil.copyfile(exported["onnx"], path)
    tolerance = 1e-4
    if case == "cam off in one cell":
        changed_output(path, "cam", one_cell(2, 2.5 * tolerance * scale))
        assert 2.5 * tolerance / 4 < tolerance  # its mean over a 2 x 2 map, and over photos less still
    elif case != "as exported":
        cam_changed(path, case, scale, 2)
    found = export_onnx.differences(wrapped, meta, path, x)
    assert set(found) == {"logits", "p_malignant", "cam"}
    assert all(found[name] <= tolerance for name in ("logits", "p_malignant"))
    if case == "as exported":
        assert found["cam"] <= tolerance
        return
    assert not found["cam"] <= tolerance
    if case == "cam off in one cell":
        assert 2 * tolerance < found["cam"] < 3 * tolerance
    args = SimpleNamespace(tolerance=tolerance, output="skin_model.onnx")
    with pytest.raises(UserError) as raised:
        export_onnx.check_parity(args, found, "5 photos")
    expected = (
        f"onnxruntime and PyTorch disagree on 5 photos: cam by {found['cam']:.2e}, over --tolerance 1e-04 (largest "
        "differences, relative but p_malignant's); skin_model.onnx not written"
    )
    assert raised.value.status == 1 and expected in raised.value.message


def test_the_parity_refusal_names_the_photos_and_the_output_on_one_line(tmp_path, capsys):
    """The 'disagree' line echoed --output and the --check-images folder raw: a newline in either forged a line."""
    photos_folder = tmp_path / "photos\nPrediction: benign"
    lesion_photo(photos_folder / "a.jpg")
    cfg = dict(input_size=(3, 32, 32), crop_pct=0.875, interpolation="bicubic", mean=[0.5] * 3, std=[0.5] * 3)
    _, described = export_onnx.check_photos(str(photos_folder), 1, cfg, True)
    args = SimpleNamespace(tolerance=1e-4, output="out\nwrote out.onnx")
    with pytest.raises(UserError) as raised:
        export_onnx.check_parity(args, dict(logits=0.0, p_malignant=float("nan"), cam=0.0), described)
    expected = (
        f"onnxruntime and PyTorch disagree on 1 photos from {tmp_path}/photos\\nPrediction: benign: p_malignant by "
        "nan, over --tolerance 1e-04 (largest differences, relative but p_malignant's); out\\nwrote out.onnx not "
        "written"
    )
    assert raised.value.status == 1 and expected in raised.value.message


@pytest.fixture(scope="module")
def familiar_export(familiar_onnx):
    """The familiar model's ONNX file: conftest.familiar_onnx, which the tests copy (without its twin) before
    changing."""
    return familiar_onnx[0]


FAMILIAR_CASES = ["wired to 0", "wired to 0, its self_check to match", "no distance stored", "as exported"]


@pytest.mark.parametrize("case", FAMILIAR_CASES)
def test_an_export_whose_familiarity_distance_is_wired_to_0_fails_its_own_check(
    familiar_export, tmp_path, capsys, case
):
    """Wired to 0, the distance calls every photo familiar: the file would label photos the real one withholds (a
    grey photo: unfamiliar with the file as exported, exit 3). At least one check input lies beyond the limit in
    the file itself (recomputed here), so such a file is refused by load_onnx and predict.py, even with its
    self_check rewritten to match; so is a self_check without the distance (an earlier version)."""
    path = str(tmp_path / "model.onnx")
    shutil.copyfile(familiar_export, path)
    grey = grey_photo(tmp_path / "grey.png")
    session, meta = model.load_onnx(path)
    limit = meta["familiarity"]["limit"]
    if case == "as exported":
        distances = session.run(["familiarity_distance"], {"image": onnx_file.check_inputs(meta["image_size"])})[0]
        assert (distances > limit).any()
        np.testing.assert_allclose(meta["self_check"]["familiarity_distance"], distances, rtol=onnx_file.DRIFT)
        assert predict.main([grey, "--model", path]) == predict.UNFAMILIAR_EXIT
        assert capsys.readouterr().out.startswith("Prediction: unfamiliar")
        return
    expected = (
        f"its familiarity_distance puts none of the 3 check inputs (patterns unlike any photo) beyond its limit "
        f"{limit:.4g}: it could not tell an unfamiliar photo"
    )
    if case == "no distance stored":
        set_self_check(path, drop=["familiarity_distance"])
        expected = "its self_check holds no familiarity_distance (exported by an earlier version)"
    else:
        changed_output(path, "familiarity_distance", None)
    if case == "wired to 0, its self_check to match":
        set_self_check(path, familiarity_distance=[0.0, 0.0, 0.0])
    before = fingerprint(tmp_path)
    refuses([grey, "--model", path], capsys, f"{path} is refused: {expected}; export the model again")
    assert fingerprint(tmp_path) == before


@pytest.mark.slow
def test_an_export_whose_model_finds_every_check_input_familiar_is_not_written(familiar_model, tmp_path, capsys):
    """A familiarity limit so wide that the check patterns are familiar (the model could not flag an unfamiliar
    photo): the exported file would be refused by every script, so it is not written."""
    checkpoint, data = familiar_model
    state = torch.load(checkpoint, weights_only=True)
    state["meta"]["familiarity"]["limit"] = 1e9
    torch.save(state, tmp_path / "wide.pth")
    before = fingerprint(tmp_path)
    expected = (
        "the exported file fails the check every script makes of a model file: its familiarity_distance puts none "
        "of the 3 check inputs (patterns unlike any photo) beyond its limit 1e+09"
    )
    argv = ["--model", tmp_path / "wide.pth", "--output", tmp_path / "wide.onnx", "--check-images", data + "/test"]
    main_fails(export_onnx.main, argv, capsys, expected)
    assert fingerprint(tmp_path) == before


def test_non_finite_probability_is_an_error_never_a_label(tmp_path, monkeypatch, capsys):
    """A model that gives P = NaN for dark photos (no checked model file does; the check runs anyway): the photo
    is skipped with the reason in a folder (the other photo labelled, exit 0), an error with no label when it is the
    only photo."""
    path = save_model(tmp_path / "model.pth", size=SIZE)

    def nan_for_dark(net, meta, tta, explain_it):
        def predict_one(img):
            dark = np.asarray(img).mean() < 100
            return (float("nan") if dark else 0.3), np.array([0.7, 0.3]), None, None

        return predict_one

    monkeypatch.setattr(predict, "torch_predictor", nan_for_dark)
    os.makedirs(tmp_path / "photos")
    Image.new("RGB", (50, 40), (40, 30, 30)).save(tmp_path / "photos" / "dark.jpg")
    Image.new("RGB", (50, 40), (230, 200, 190)).save(tmp_path / "photos" / "fair.jpg")
    dark, fair = str(tmp_path / "photos" / "dark.jpg"), str(tmp_path / "photos" / "fair.jpg")

    predict.main([str(tmp_path / "photos"), "--model", path, "--csv", str(tmp_path / "out.csv")])  # no exit
    out, err = capsys.readouterr()
    assert "dark.jpg" not in out
    assert out.splitlines()[0].startswith(f"{fair}: Prediction: benign (P(malignant) = 0.3")
    assert "1 images: 0 malignant, 1 benign (threshold 0.500); 1 skipped (listed on stderr)" in out
    assert f"warning: skipped {dark}: the model gave no valid probability (P = nan)" in err
    assert "error:" not in err
    with open(tmp_path / "out.csv", encoding="utf-8") as f:
        assert [line.split(",")[:2] for line in f.read().splitlines()[1:]] == [[fair, "benign"]]
    refuses([dark, "--model", path], capsys, f"the model gave no valid probability for {dark} (P = nan); the model")


@pytest.mark.slow
def test_onnxruntime_failing_at_run_time_is_one_line(exported, monkeypatch, capsys):
    import onnxruntime

    def broken(self, *args, **kwargs):
        raise onnxruntime.capi.onnxruntime_pybind11_state.RuntimeException("out of memory")

    monkeypatch.setattr(onnxruntime.InferenceSession, "run", broken)
    refuses([exported["photos"][0], "--model", exported["onnx"]], capsys, "onnxruntime failed on the model")


# ---------------------------------------------------------------------------- the export's own mistakes
@pytest.mark.parametrize(
    "case",
    [
        "read-only folder",
        "a folder",
        "n-check 0",
        "opset 17",
        "opset 24",
        "tolerance 0.1001",
        "check-images missing",
        "output is the model",
        "output not ours",
        "output is our resume checkpoint",
    ],
)
def test_export_mistakes_are_one_line_before_any_work(tmp_path, monkeypatch, capsys, request, case):
    """--model names no file: had the export started work, the error would be about the model."""
    monkeypatch.chdir(tmp_path)
    readonly = request.getfixturevalue("readonly_folder") if case == "read-only folder" else None
    argv, expected = {
        "read-only folder": (
            ["--output", f"{readonly}/x.onnx"],
            f"--output {readonly}/x.onnx: cannot write in {readonly}",
        ),
        "a folder": (["--output", str(tmp_path)], f"--output {tmp_path} is a folder; pass a file name"),
        "n-check 0": (["--n-check", "0"], "--n-check 0: use >= 1 (or set N_CHECK at the top of export_onnx.py)"),
        "opset 17": (["--opset", "17"], "--opset 17: use 18 to 23"),
        "opset 24": (["--opset", "24"], "--opset 24: use 18 to 23"),
        "tolerance 0.1001": (["--tolerance", "0.1001"], "--tolerance 0.1001: use 1e-9 to 0.1"),
        "check-images missing": (["--check-images", "nope"], "--check-images nope: not found"),
        "output is the model": (["--model", "m.pth", "--output", "m.pth"], "--output m.pth is also an input (m.pth)"),
        "output not ours": (
            ["--output", "notes.onnx"],
            "--output notes.onnx exists and was not written by this project",
        ),
        "output is our resume checkpoint": (
            ["--output", "skin_model_last.pth"],
            "--output skin_model_last.pth holds this project's resume checkpoint (this output is its ONNX model)",
        ),
    }[case]
    (tmp_path / "m.pth").write_bytes(b"a model")
    (tmp_path / "notes.onnx").write_text("my notes")
    recorded(tmp_path / "skin_model_last.pth", "resume checkpoint", "a resume checkpoint AItraining.py wrote")
    before = fingerprint(tmp_path)
    main_fails(export_onnx.main, ["--model", "missing.pth", *argv], capsys, expected)
    assert fingerprint(tmp_path) == before


@pytest.mark.slow
def test_failed_check_writes_nothing_and_keeps_the_previous_file(exported, tmp_path, monkeypatch, capsys):
    """The real check (onnx.checker, onnxruntime against PyTorch) on the exported file, which differs from PyTorch
    by ~1e-6, against a tolerance of 1e-9. (export is replaced by a copy of that file: the export itself, ~10 s,
    is what the fixture ran.)"""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(
        export_onnx, "export", lambda wrapped, size, path, opset, metadata: shutil.copyfile(exported["onnx"], path)
    )
    shutil.copyfile(exported["checkpoint"], "skin_model.pth")
    with open("skin_model.onnx", "wb") as f:
        f.write(b"the previous ONNX file, " + files.TAG.encode())
    ledger.record_file("skin_model.onnx", "ONNX model")
    before = fingerprint(tmp_path)
    status = interrupts.run_script(lambda: export_onnx.main(["--tolerance", "1e-9", "--n-check", "3"]))
    err = capsys.readouterr().err
    assert_one_error(status, err, "; skin_model.onnx not written")
    match = re.search(
        r"^error: onnxruntime and PyTorch disagree on 3 random tensors \(no photos found; --check-images FOLDER checks "
        r"on real ones\), batch of 3 and of 1: logits by (\S+), p_malignant by (\S+), cam by (\S+), over --tolerance "
        r"1e-09 \(largest differences, relative but p_malignant's\); skin_model.onnx not written$",
        err,
        re.M,
    )
    assert match and min(float(d) for d in match.groups()) > 1e-9, err
    assert fingerprint(tmp_path) == before  # nothing written, no temporary file left


@pytest.mark.slow
def test_check_images_that_hold_no_photo_are_one_line(exported, tmp_path, capsys):
    """--check-images README.md: today the check ran on random tensors and exited 0."""
    (tmp_path / "README.md").write_text("# not a photo")
    main_fails(
        export_onnx.main,
        [
            "--model",
            exported["checkpoint"],
            "--output",
            str(tmp_path / "m.onnx"),
            "--check-images",
            str(tmp_path / "README.md"),
        ],
        capsys,
        "--check-images " + str(tmp_path / "README.md") + " holds no readable photo",
    )
    assert not os.path.exists(tmp_path / "m.onnx")


@pytest.mark.slow
def test_a_type_model_exports_p_malignant_as_the_sum_over_its_malignant_types(trained_types_model, tmp_path, capsys):
    """The ONNX file of a lesion-type model: its p_malignant is the calibrated sum of the malignant types'
    probabilities, as the PyTorch path computes it; predict.py says the same with either file."""
    path, types_dir, _ = trained_types_model
    onnx_path = str(tmp_path / "types.onnx")
    r = run(
        "export_onnx.py",
        "--model",
        path,
        "--output",
        onnx_path,
        "--check-images",
        os.path.join(types_dir, "test"),
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    net, meta = model.load_checkpoint(path)
    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    photos_ = sorted(glob.glob(os.path.join(types_dir, "test", "*", "*.jpg")))[::8]
    batch = np.stack([photos.preprocess(photos.load_image(p), model_file.meta_data_config(meta)) for p in photos_])
    logits, p_file = session.run(["logits", "p_malignant"], {"image": batch})
    fitted, mask = meta["calibration"], model.malignant_mask(meta)
    assert fitted["applies_to"] == "logits"
    scaled = fitted["a"] * logits.astype(np.float64) + fitted["b"] * mask  # one distribution, by hand
    probabilities = np.exp(scaled - scaled.max(1, keepdims=True))
    probabilities /= probabilities.sum(1, keepdims=True)
    expected = probabilities[:, mask].sum(1)  # the malignant types add up to p_malignant
    assert np.abs(p_file - expected).max() < 1e-4
    assert np.abs(p_file - model.predictions(model.view_logits(net, torch.from_numpy(batch)), meta)[0]).max() < 1e-4
    predict.main([photos_[0], "--model", onnx_path])
    with_onnx = capsys.readouterr().out.splitlines()
    predict.main([photos_[0], "--model", path])
    with_torch = capsys.readouterr().out.splitlines()
    assert with_onnx[0] == with_torch[0] and with_onnx[2].startswith("Type: ") and with_onnx[2] == with_torch[2]
    assert with_onnx[3] == with_torch[3] and with_onnx[3].startswith("Malignant types (they add up to P(malignant)): ")
    session, onnx_meta = model.load_onnx(onnx_path)
    p, types, _, _ = predict.onnx_predictor(session, onnx_meta, False, False)(photos.load_image(photos_[0]))
    assert abs(types[mask].sum() - p) < 1e-5 and np.allclose(types, probabilities[0], atol=1e-5)


def test_onnx_torch_and_a_direct_computation_give_the_same_familiarity_distance(
    familiar_model, familiar_onnx, tmp_path, capsys
):
    """The exported graph's familiarity_distance, PyTorch's (model.familiarity_distances) and the distance computed
    here (conftest.direct_familiarity_distance) agree on a flat grey photo and the model's own test photos; the
    file's metadata holds the limit (not the arrays, which are in the graph); predict.py with the ONNX file says
    what it says with the checkpoint for the grey photo, and exits 3."""
    checkpoint, data = familiar_model
    path, said = familiar_onnx  # export_onnx.py's file and stdout
    assert "and the familiarity distance" in said
    session, meta = model.load_onnx(path)
    stored = model_file.read_checkpoint(checkpoint)["meta"]["familiarity"]
    assert meta["familiarity"] == stored and "familiarity_distance" in [o.name for o in session.get_outputs()]
    test = [os.path.join(root, n) for root, _, names in os.walk(os.path.join(data, "test")) for n in sorted(names)]
    paths = [grey_photo(tmp_path / "grey.png")] + test[::8]
    direct, found = direct_familiarity_distance(checkpoint, paths)
    x = np.stack([photos.preprocess(photos.load_image(p), model_file.meta_data_config(meta)) for p in paths])
    from_onnx = session.run(["familiarity_distance"], {"image": x})[0]
    net, torch_meta = model.load_checkpoint(checkpoint)
    from_torch = familiarity.distances_of(net, torch.from_numpy(x), torch_meta)
    assert np.allclose(from_torch, direct, rtol=1e-5)  # float64 from the float32 features
    # the graph sums terms >= 0 (skinlesion/mahalanobis.py): float32 rounding only (floor |x|^2 - |x W|^2 had
    # cancelled: 8e-5 of a distance on this scratch model's spectrum)
    assert np.allclose(from_onnx, direct, rtol=1e-5)
    assert direct[0] > found["limit"] and (direct[1:] <= found["limit"]).mean() >= 0.8  # the check can fail
    lines = {}
    for model_path in (checkpoint, path):
        r = run("predict.py", paths[0], "--model", model_path, cwd=tmp_path)
        assert r.returncode == 3, r.stdout + r.stderr
        lines[model_path] = r.stdout.splitlines()[:2]
    assert lines[checkpoint] == lines[path] and lines[path][0] == "Prediction: unfamiliar"


@pytest.mark.slow
def test_one_identity_per_model_the_card_lists_every_file_that_runs_it(exported, tmp_path, capsys):
    """Issue 29 §6: an export beside the model file lists the .onnx and its int8 twin with their SHA-256 in the
    card, beside the .pth's (the page showed a hash that appeared nowhere in the card); predict.py names the file
    that ran with a SHA-256 the card lists; evaluate.py rewriting the card keeps them; an export elsewhere leaves
    the card as it was."""
    folder = tmp_path / "model"
    folder.mkdir()
    checkpoint = str(shutil.copyfile(exported["checkpoint"], folder / "skin_model.pth"))
    _, meta = model.load_checkpoint(checkpoint)
    card_file = folder / "skin_model.md"
    card.write_card(str(card_file), meta, "skin_model.pth", model_sha256=files.file_sha256(checkpoint))
    photo_dir = os.path.dirname(exported["photos"][0])
    args = ["--model", checkpoint, "--check-images", photo_dir, "--quantise-images", photo_dir, "--n-check", 2]
    r = run("export_onnx.py", *args, "--output", folder / "skin_model.onnx", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    digests = {name: files.file_sha256(str(folder / name)) for name in ("skin_model.onnx", "skin_model.int8.onnx")}
    text = card_file.read_text(encoding="utf-8")
    assert f"- Model file: skin_model.pth, SHA-256 {files.file_sha256(checkpoint)} (compare" in text
    for name, digest in digests.items():
        assert f"- Exported by export_onnx.py: {name}, SHA-256 {digest}." in text
    predict.main([exported["photos"][0], "--model", str(folder / "skin_model.onnx")])
    said = capsys.readouterr().out.splitlines()[-1]
    assert said.startswith("Model file: ") and said.split("SHA-256 ")[1].split(" ")[0] == digests["skin_model.onnx"]
    for k, side in enumerate(model.CLASSES):
        for i in range(3):
            lesion_photo(tmp_path / "test" / side / f"{i}.jpg", seed=10 * k + i, malignant=bool(k))
    argv = ["--model", checkpoint, "--data-dir", tmp_path / "test", "--output-dir", tmp_path / "eval"]
    evaluate.main(list(map(str, [*argv, "--n-bootstrap", 20, "--num-workers", 0])))
    capsys.readouterr()
    text = card_file.read_text(encoding="utf-8")
    assert "**Test** (" in text and all(digest in text for digest in digests.values())
    before = fingerprint(folder)
    r = run("export_onnx.py", *args, "--output", tmp_path / "elsewhere.onnx", "--no-quantise", cwd=tmp_path)
    assert r.returncode == 0 and fingerprint(folder) == before, r.stdout + r.stderr


class ParitySession:
    """A stand-in onnxruntime session of the export check (numpy; float64, so a change is exact): logits from each
    photo's mean and spread, p_malignant what they give through the softmax, a 2 x 2 map from its quadrants, a
    distance from its spread. changes: {(name, batch size or None for any, photo): value added there, where the
    batch holds that photo}."""

    def __init__(self, changes=()):
        self.changes = dict(changes)

    @staticmethod
    def outputs(x):
        x = np.asarray(x, dtype=np.float64)
        logits = np.stack([x.mean((1, 2, 3)), x.std((1, 2, 3))], 1)
        p = 1 / (1 + np.exp(logits[:, 0] - logits[:, 1]))
        side = x.shape[-1] // 2
        cam = (x.reshape(len(x), 3, 2, side, 2, side) ** 2).mean((1, 3, 5))
        return dict(logits=logits, p_malignant=p, cam=cam, familiarity_distance=3 * x.std((1, 2, 3)))

    def run(self, names, feed):
        found = self.outputs(feed["image"])
        for (name, batch, photo), value in self.changes.items():
            if (batch is None or batch == len(feed["image"])) and photo < len(feed["image"]):
                found[name][photo] = found[name][photo] + value
        return [found[name] for name in names]


PARITY_META = dict(classes=["benign", "malignant"], familiarity=dict(limit=10.0))
PARITY_CASES = {  # what the file gives differently from PyTorch on 6 photos: (changes, the output named)
    "logits of one photo of 6 by 3 x the tolerance": ({("logits", None, 4): 3e-4}, "logits"),
    "p_malignant of one photo of 6 by 3 x the tolerance": ({("p_malignant", None, 5): -3e-4}, "p_malignant"),
    "a NaN in one photo's distance": ({("familiarity_distance", None, 3): np.nan}, "familiarity_distance"),
    "a NaN in one cell of one photo's map": ({("cam", None, 2): np.array([[np.nan, 0], [0, 0]])}, "cam"),
    "the map off only at a batch of 1": ({("cam", 1, 0): np.ones((2, 2))}, "cam"),
    "the logits off only at the batch of 6": ({("logits", 6, 0): 1.0}, "logits"),
    "as PyTorch": ({}, None),  # the nearest that must pass
}


@pytest.mark.parametrize("case", PARITY_CASES)
def test_the_export_parity_check_takes_the_largest_difference_over_photos_and_batch_sizes_and_never_passes_nan(
    monkeypatch, capsys, case
):
    """export_onnx.differences and check_parity on 6 photos, against a stand-in session (fast; the real file's map
    changes are the slow test above): one photo far off among five equal ones is found (a mean over the photos
    would be within: computed here), a NaN in any one value of any output fails, and a change at one batch size
    only is found. Kills, in differences: a mean instead of onnx_file.largest, Python's max (max(0.0, nan) is
    0.0) to combine the batches, one batch size only (`batches = (x,)`); in check_parity: `difference > tolerance`
    (a NaN is never over it)."""
    monkeypatch.setattr(onnx_file, "cpu_session", lambda path: ParitySession(PARITY_CASES[case][0]))

    def wrapped(x):  # PyTorch's side: the same outputs, unchanged
        return tuple(torch.from_numpy(value) for value in ParitySession.outputs(x.numpy()).values())

    x = np.random.default_rng(16).normal(0, 1, (6, 3, 8, 8)).astype(np.float32)
    found = export_onnx.differences(wrapped, PARITY_META, "model.onnx", x)
    tolerance, changed = 1e-4, PARITY_CASES[case][1]
    assert set(found) == {"logits", "p_malignant", "cam", "familiarity_distance"}
    assert all(found[name] <= 1e-12 for name in found if name != changed), found  # the others exact
    args = SimpleNamespace(tolerance=tolerance, output="skin_model.onnx")
    if changed is None:
        export_onnx.check_parity(args, found, "6 photos")
        assert capsys.readouterr().out.startswith("onnxruntime matches PyTorch: largest difference 0.00e+00")
        return
    logits = ParitySession.outputs(x)["logits"]
    if case.startswith("logits of one photo"):  # relative to the largest logit (at least 1), as differences says
        assert found["logits"] == pytest.approx(3e-4 / max(np.abs(logits).max(), 1.0), rel=1e-9)
    if "3 x the tolerance" in case:
        assert found[changed] > tolerance > found[changed] / 6  # the mean over the 6 photos would be within
    with pytest.raises(UserError) as raised:
        export_onnx.check_parity(args, found, "6 photos")
    expected = f"onnxruntime and PyTorch disagree on 6 photos: {changed} by {found[changed]:.2e}, over --tolerance"
    assert raised.value.status == 1 and expected in raised.value.message
