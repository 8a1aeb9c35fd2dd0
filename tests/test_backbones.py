"""Another timm backbone along the whole path: tf_efficientnet_lite0, fine-tuned from the stand-in ImageNet
weights (conftest.trained_lite0), trained, evaluated, exported and used by predict.py with PyTorch and with
onnxruntime, which agree; the page's parity for it is in test_web.py. EfficientNet-B0, the default, takes the
same path in the rest of the suite."""

import csv
import hashlib
import json
import os

import onnx
import pytest

import predict
from conftest import lesion_photo, refuses, run
from skinlesion import model_file
from skinlesion.card import markdown_text

LITE0 = {"architecture": "tf_efficientnet_lite0", "features": 1280, "stride": 32, "convs": 49}  # timm's network


def p_by_file(path):
    with open(path, newline="", encoding="utf-8") as f:
        return {row["file"]: float(row["p_malignant"]) for row in csv.DictReader(f)}


def test_lite0_trains_from_its_weights_file_evaluates_exports_and_predicts(trained_lite0, demo_dataset, tmp_path):
    checkpoint, out, weights = trained_lite0
    meta = model_file.read_checkpoint(checkpoint)["meta"]
    assert meta["model_name"] == "tf_efficientnet_lite0" and meta["network"] == LITE0
    assert "recipe: finetune (--recipe finetune)" in out
    assert meta["val_metrics"]["roc_auc"] >= 0.8, out  # it learned: ImageNet features on the demo's drawings
    with open(weights, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    with open(os.path.splitext(checkpoint)[0] + ".md", encoding="utf-8") as f:
        card = f.read()
    name, file = markdown_text("tf_efficientnet_lite0"), markdown_text(os.path.basename(weights))
    assert f"{name} (timm), started from ImageNet weights from the file {file} " in card
    assert f"(SHA-256 {digest})" in card and "base_model" not in card  # a local file has no hub id

    test = os.path.join(demo_dataset, "test")
    r = run("evaluate.py", "--model", checkpoint, "--data-dir", test, "--output-dir", tmp_path / "eval", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    with open(tmp_path / "eval" / "evaluation.json", encoding="utf-8") as f:
        assert json.load(f)["metrics"]["roc_auc"] >= 0.7

    onnx_file = str(tmp_path / "lite0.onnx")
    r = run("export_onnx.py", "--model", checkpoint, "--output", onnx_file, "--check-images", test, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "'cam' [batch, 2, 2]" in r.stdout  # 64 px / stride 32, from the network

    for name, model_path in [("torch", checkpoint), ("onnx", onnx_file)]:
        predict.main([test, "--model", model_path, "--csv", str(tmp_path / f"{name}.csv")])
    by_torch, by_onnx = p_by_file(tmp_path / "torch.csv"), p_by_file(tmp_path / "onnx.csv")
    assert by_torch.keys() == by_onnx.keys() and len(by_torch) >= 10
    assert max(abs(by_torch[k] - by_onnx[k]) for k in by_torch) <= 1e-4
    assert max(by_torch.values()) - min(by_torch.values()) > 0.1  # the answers vary: the comparison can fail


@pytest.mark.parametrize("claim", ["B0's network", "B0's name and network"])
def test_a_foreign_body_behind_b0s_outputs_is_refused(trained_lite0, tmp_path, capsys, claim):
    """Lite0's graph gives B0's outputs (logits, p_malignant, a 2 x 2 map at 64 px); metadata that claims B0's
    network (81 convolutions) is refused, whatever name it gives."""
    checkpoint = trained_lite0[0]
    path = str(tmp_path / "lite0.onnx")
    r = run("export_onnx.py", "--model", checkpoint, "--output", path, "--n-check", 2, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    proto = onnx.load(path)
    b0 = {"architecture": "efficientnet_b0", "features": 1280, "stride": 32, "convs": 81}
    for prop in proto.metadata_props:
        if prop.key == "network":
            prop.value = json.dumps(b0)
        if prop.key == "model_name" and claim == "B0's name and network":
            prop.value = json.dumps("efficientnet_b0")
    onnx.save(proto, path)
    photo = lesion_photo(tmp_path / "photo.jpg")
    if claim == "B0's network":
        expected = "its network {'architecture': 'efficientnet_b0'"
    else:
        expected = "its graph is not efficientnet_b0 with 2 classes (81 convolutions, a 1280-wide classifier; it has 49"
    refuses([photo, "--model", path], capsys, f"{path} is refused: {expected}")
