"""model.py: the network, ImageNet-weight loading and its offline fallback, the checkpoint format."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def net():
    return model.build_model(pretrained=False)


def test_two_class_output_in_channels_last(net):
    net = model.prepare_for_device(net, "cpu").eval()
    with torch.inference_mode():
        out = net(torch.randn(3, 3, 64, 64).contiguous(memory_format=torch.channels_last))
    assert out.shape == (3, 2)
    assert net.conv_stem.weight.is_contiguous(memory_format=torch.channels_last)


def test_loss_and_optimiser_are_the_users_choice(net):
    assert isinstance(model.make_criterion(), torch.nn.CrossEntropyLoss)
    opt = model.make_optimizer(net)
    assert isinstance(opt, torch.optim.Adam) and opt.param_groups[0]["lr"] == 1e-4


def test_transforms_follow_timm_data_config(net):
    cfg = model.data_config(net, 128)
    assert cfg["input_size"] == (3, 128, 128) and cfg["interpolation"] == "bicubic"
    assert cfg["mean"] == pytest.approx((0.485, 0.456, 0.406))
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 200, 3), dtype=np.uint8))
    assert model.train_transform(cfg)(img).shape == (3, 128, 128)
    x = model.eval_transform(cfg)(img)
    assert x.shape == (3, 128, 128)
    np.testing.assert_allclose(model.preprocess(img, cfg), x.numpy(), atol=1e-5)


def test_checkpoint_round_trip_keeps_weights_and_metadata(tmp_path, net):
    cfg = model.data_config(net, 96)
    path = str(tmp_path / "m.pth")
    model.save_checkpoint(path, model.checkpoint_state(net, cfg, threshold=0.3, metrics={"roc_auc": 0.9},
                                                       epoch=4, manifest_sha256="abc"))
    assert os.listdir(tmp_path) == ["m.pth"]  # the temporary file was renamed away
    loaded, meta = model.load_checkpoint(path)
    for (k, a), b in zip(net.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k
    assert not loaded.training
    assert meta["classes"] == ["benign", "malignant"] and meta["image_size"] == 96
    assert meta["threshold"] == 0.3 and meta["epoch"] == 4 and meta["val_metrics"]["roc_auc"] == 0.9
    assert meta["manifest_sha256"] == "abc" and "torch" in meta["versions"]
    assert model.meta_data_config(meta) == cfg


def run_python(code, **env):
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=300)


def test_offline_pretrained_falls_back_with_one_warning():
    r = run_python("import model; net = model.build_model(pretrained=True); print(type(net).__name__)",
                   HF_HUB_OFFLINE="1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "EfficientNet"
    warnings = [line for line in r.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1
    assert "WEIGHTS_FILE" in warnings[0] and "PRETRAINED = False" in warnings[0]
    assert "Traceback" not in r.stderr


def test_local_weights_file_loads_offline_into_a_new_head(tmp_path):
    imagenet = model.build_model(pretrained=False, num_classes=1000)
    weights = tmp_path / "efficientnet_b0.pth"
    torch.save(imagenet.state_dict(), weights)
    net = model.build_model(weights_file=str(weights))
    assert torch.equal(net.conv_stem.weight, imagenet.conv_stem.weight)
    assert net.get_classifier().out_features == 2


def test_missing_weights_file_is_one_line_error(tmp_path):
    r = run_python(f"import model; model.build_model(weights_file={str(tmp_path / 'nope.pth')!r})")
    assert r.returncode == 1
    assert r.stderr.startswith("error: weights file") and "hf download" in r.stderr
    assert "Traceback" not in r.stderr


def test_binary_metrics_by_hand():
    y = [0, 0, 0, 0, 1, 1, 1, 1]
    p = [0.1, 0.2, 0.6, 0.3, 0.8, 0.4, 0.9, 0.7]
    m = model.binary_metrics(y, p, threshold=0.5)
    assert (m["tn"], m["fp"], m["fn"], m["tp"]) == (3, 1, 1, 3)
    assert m["sensitivity"] == 0.75 and m["specificity"] == 0.75 and m["accuracy"] == 0.75
    assert m["roc_auc"] == pytest.approx(15 / 16)  # one of the 16 benign/malignant pairs is misordered


def test_load_image_handles_exif_16bit_rgba_cmyk(tmp_path):
    rgb = Image.new("RGB", (40, 20), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees
    rgb.save(tmp_path / "rot.jpg", exif=exif)
    assert model.load_image(tmp_path / "rot.jpg").size == (20, 40)
    Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16)).save(tmp_path / "deep.png")
    assert model.load_image(tmp_path / "deep.png").getpixel((0, 0)) == (255, 255, 255)
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    assert model.load_image(tmp_path / "clear.png").getpixel((0, 0)) == (255, 255, 255)
    Image.new("CMYK", (8, 8), (0, 0, 0, 0)).save(tmp_path / "cmyk.jpg")
    assert model.load_image(tmp_path / "cmyk.jpg").mode == "RGB"
