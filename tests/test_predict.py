"""predict.py on a random-init 64 px EfficientNet-B0: output format, the stored and overridden threshold,
folders, CSV, TTA, user mistakes, and Grad-CAM."""
import csv
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import model
import predict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "predict.py")
SIZE = 64


def make_net():
    """Random-init EfficientNet-B0 whose P(malignant) depends on the photo. At random init the BatchNorm
    statistics (mean 0, variance 1) shrink the features to ~1e-5 and every photo gets 0.5; statistics from
    one batch and a scaled-up head fix that."""
    torch.manual_seed(0)
    net = model.build_model(pretrained=False)
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # running statistics = plain average over the batch
    net.train()
    with torch.no_grad():
        net(torch.rand(8, 3, SIZE, SIZE) * 4 - 2)
        net.classifier.weight.mul_(0.2)
    return net.eval()


def save_photo(path, size=(90, 70), seed=0):
    """A skin-coloured JPEG/PNG with noise and a dark blob, like a (very) small dermoscopy photo."""
    rng = np.random.default_rng(seed)
    w, h = size
    img = np.array([200, 150, 130]) + rng.normal(0, 20, (h, w, 3))
    yy, xx = np.mgrid[:h, :w]
    cy, cx, r = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w, min(w, h) * rng.uniform(0.15, 0.3)
    img[(yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2] *= 0.35
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """The same weights with threshold 0 (always malignant) and 1.01 (always benign)."""
    folder = tmp_path_factory.mktemp("models")
    net = make_net()
    cfg = model.data_config(net, SIZE)
    paths = {}
    for threshold in (0.0, 1.01):
        paths[threshold] = str(folder / f"model {threshold}.pth")
        model.save_checkpoint(paths[threshold], model.checkpoint_state(net, cfg, threshold=threshold))
    return paths


def run(args, cwd):
    # one thread: on a busy 2-core machine two spinning OpenMP threads make a 64 px forward ~100x slower
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONIOENCODING="utf-8", OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=cwd, capture_output=True, text=True,
                          encoding="utf-8", env=env, timeout=300)


def flip_mean(net, meta, path):
    """P(malignant) averaged over the four flips, computed here without model.malignant_probability."""
    x = model.eval_transform(model.meta_data_config(meta))(model.load_image(path))[None]
    with torch.no_grad():
        views = [x, x.flip(3), x.flip(2), x.flip(2).flip(3)]
        probs = [torch.softmax(net(v), 1)[0, 1].item() for v in views]
    return float(np.mean(probs)), probs


def test_single_image_with_spaces_and_accents(tmp_path, checkpoints):
    photo = save_photo(str(tmp_path / "my photos" / "grain de beauté n°1.jpg"))
    result = run([photo, "--model", checkpoints[0.0], "--explain"], tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "Prediction: malignant"  # threshold 0 from the checkpoint: everything is malignant
    match = re.fullmatch(r"P\(malignant\) = ([01]\.\d{3}) \(threshold 0\.000\)", lines[1])
    assert match, lines[1]
    net, meta = model.load_checkpoint(checkpoints[0.0])
    x = model.eval_transform(model.meta_data_config(meta))(model.load_image(photo))[None]
    with torch.no_grad():
        p = torch.softmax(net(x), 1)[0, 1].item()
    assert abs(float(match.group(1)) - p) <= 5e-4
    cam_png = tmp_path / "my photos" / "grain de beauté n°1_gradcam.png"
    assert f"Grad-CAM saved to {cam_png}" in result.stdout
    with Image.open(cam_png) as img:
        assert img.format == "PNG" and min(img.size) > 100
    assert "not a medical device" in result.stderr and "Traceback" not in result.stderr


def test_folder_csv_and_tta(tmp_path, checkpoints):
    photos = [save_photo(str(tmp_path / "photos" / name), size, seed)
              for seed, (name, size) in enumerate([("a.jpg", (90, 70)), ("b.png", (64, 100)), ("sub/c.jpg", (80, 80))])]
    (tmp_path / "photos" / "notes.txt").write_text("not a photo")
    result = run(["photos", "--model", checkpoints[1.01], "--tta", "--csv", "out.csv"], tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for line, photo in zip(lines, ["photos/a.jpg", "photos/b.png", "photos/sub/c.jpg"]):  # sorted, recursive
        assert re.fullmatch(re.escape(photo) + r": Prediction: benign \(P\(malignant\) = [01]\.\d{3}\)", line), line
    assert lines[3].startswith("3 images: 0 malignant, 3 benign (threshold 1.010, mean over 4 flips); 1 skipped")
    assert "skipped photos/notes.txt: not an image file" in result.stderr
    with open(tmp_path / "out.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["file"] for r in rows] == ["photos/a.jpg", "photos/b.png", "photos/sub/c.jpg"]
    assert {(r["prediction"], r["threshold"]) for r in rows} == {("benign", "1.01")}
    net, meta = model.load_checkpoint(checkpoints[1.01])
    views_differ = False
    for row, photo in zip(rows, photos):
        mean, views = flip_mean(net, meta, photo)
        assert abs(float(row["p_malignant"]) - mean) <= 2e-6
        views_differ |= max(views) - min(views) > 1e-3
    assert views_differ, "the flips give the same P(malignant): this test could not tell TTA from no TTA"


def test_threshold_flag_overrides_the_stored_one(tmp_path, checkpoints, monkeypatch, capsys):
    photo = save_photo(str(tmp_path / "photo.jpg"))
    monkeypatch.setattr(sys, "argv", ["predict.py", photo, "--model", checkpoints[1.01], "--threshold", "0"])
    predict.main()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "Prediction: malignant" and lines[1].endswith("(threshold 0.000)")


def user_mistakes(tmp_path, checkpoint):
    photo = save_photo(str(tmp_path / "photo.jpg"))
    (tmp_path / "text.jpg").write_text("this is not a JPEG")
    (tmp_path / "empty").mkdir()
    return {
        "missing model": ([photo, "--model", "nope.pth"], "AItraining.py"),
        "missing photo": (["nope.jpg", "--model", checkpoint], "nope.jpg not found"),
        "text named .jpg": (["text.jpg", "--model", checkpoint], "not a readable image"),
        "empty folder": (["empty", "--model", checkpoint], "no images in empty"),
        "bad threshold": ([photo, "--model", checkpoint, "--threshold", "2"], "not a probability"),
    }


@pytest.mark.parametrize("case", ["missing model", "missing photo", "text named .jpg", "empty folder", "bad threshold"])
def test_user_mistakes_give_one_line(tmp_path, checkpoints, case):
    args, expected = user_mistakes(tmp_path, checkpoints[0.0])[case]
    result = run(args, tmp_path)
    assert result.returncode == 1 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("error: ") and expected in result.stderr


def test_folder_with_nothing_readable_fails(tmp_path, checkpoints, monkeypatch, capsys):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "broken.jpg").write_bytes(b"\xff\xd8\xff truncated")
    (tmp_path / "photos" / "notes.txt").write_text("not a photo")
    monkeypatch.setattr(sys, "argv", ["predict.py", str(tmp_path / "photos"), "--model", checkpoints[0.0]])
    with pytest.raises(SystemExit) as exit:
        predict.main()
    assert exit.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "error: none of the 2 files could be read as images; pass .jpg or .png photos"
    assert any("broken.jpg: not a readable image" in line for line in err[:-1])


def test_gradcam_on_efficientnet(tmp_path, checkpoints):
    """Shape, range and PNG on the real architecture, and the same map as the textbook recipe: a hook
    on the final feature map (bn2's output) and the gradient through the whole network."""
    net, meta = model.load_checkpoint(checkpoints[0.0])
    cfg = model.meta_data_config(meta)
    for seed in range(20):  # a photo with some evidence for malignant (else the map is all zeros, rightly)
        x = model.eval_transform(cfg)(model.load_image(save_photo(str(tmp_path / "photo.jpg"), seed=seed)))[None]
        with torch.no_grad():
            if torch.softmax(net(x), 1)[0, 1] > 0.5:
                break
    cam = predict.gradcam(net, x)
    assert cam.shape == (SIZE, SIZE) and cam.dtype == np.float32
    assert cam.min() >= 0 and cam.max() == pytest.approx(1.0)

    grabbed = {}
    hook = net.bn2.register_forward_hook(lambda module, inputs, output: grabbed.update(features=output))
    logits = net(x.contiguous(memory_format=torch.channels_last))
    hook.remove()
    features = grabbed["features"]
    grads, = torch.autograd.grad(logits[0, 1] - logits[0, 0], features)
    ref = F.relu((grads.mean((2, 3), keepdim=True) * features).sum(1, keepdim=True)).detach()
    ref = F.interpolate(ref, size=(SIZE, SIZE), mode="bilinear", align_corners=False)[0, 0]
    np.testing.assert_allclose(cam, (ref / ref.max()).numpy(), atol=1e-5)

    crop = predict.shown_crop(x, cfg)
    assert crop.shape == (SIZE, SIZE, 3) and 0 <= crop.min() and crop.max() <= 1
    predict.save_gradcam(crop, cam, str(tmp_path / "cam.png"), "title")
    with Image.open(tmp_path / "cam.png") as img:
        img.verify()
        assert img.format == "PNG"


class DarkSpotNet(torch.nn.Module):
    """A stand-in with timm's forward_features/forward_head whose evidence is known by construction:
    feature 0 is how dark each 8x8 patch is, feature 1 how bright, and the malignant log-odds is mean
    darkness minus mean brightness. (A random-init EfficientNet localises nothing, and training one to
    would take minutes; with a trained checkpoint Grad-CAM runs the same code.)"""

    def forward_features(self, x):
        grey = x.mean(1, keepdim=True)
        return F.avg_pool2d(torch.cat([F.relu(-grey), F.relu(grey)], 1), 8)

    def forward_head(self, features):
        evidence = features.mean((2, 3))
        score = evidence[:, 0] - evidence[:, 1]
        return torch.stack([-score / 2, score / 2], 1)


@pytest.mark.parametrize("cy,cx", [(14, 18), (16, 46), (48, 12), (44, 50)])
def test_gradcam_points_at_the_dark_spot(cy, cx):
    """The map must peak on the spot wherever it is: catches a wrong sign, channel weighting, transposed or
    flipped upsampling."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    spot = (yy - cy) ** 2 + (xx - cx) ** 2 < 8 ** 2
    x = torch.full((1, 3, SIZE, SIZE), 0.8)
    x[:, :, torch.from_numpy(spot)] = -1.5
    cam = predict.gradcam(DarkSpotNet(), x)
    assert cam.shape == (SIZE, SIZE) and cam.min() >= 0 and cam.max() == pytest.approx(1.0)
    assert spot[np.unravel_index(cam.argmax(), cam.shape)]
    quadrant = (yy < SIZE // 2) == (cy < SIZE // 2)
    quadrant &= (xx < SIZE // 2) == (cx < SIZE // 2)
    assert cam[quadrant].sum() > 0.6 * cam.sum()
