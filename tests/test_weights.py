"""skinlesion/weights.py: ImageNet weights from a local file (offline), or from the hub, whose absence is found
out in a moment (not after the hub client's ~46 s of retries) and is one warning."""

import os
import subprocess
import sys

import pytest
import torch

import model
from conftest import ROOT, fails

WITHOUT_THE_HUB = """
import time
import model
model.build_model(pretrained=False)  # timm's first model takes seconds on a busy machine: not what is measured
start = time.monotonic()
net, imagenet = model.build_model(pretrained=True)
print(type(net).__name__, imagenet, time.monotonic() - start)
"""


@pytest.mark.slow
@pytest.mark.parametrize("offline", [None, "1"], ids=["HF_HUB_OFFLINE unset", "HF_HUB_OFFLINE=1"])
def test_no_route_to_the_hub_falls_back_at_once_with_one_warning(tmp_path, offline):
    """No network (as on this machine), HF_HUB_OFFLINE unset or set, an empty hub cache: one warning, no retries,
    in a moment."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_CACHE=str(tmp_path / "hub-cache"))
    if offline:
        env["HF_HUB_OFFLINE"] = offline
    r = subprocess.run(
        [sys.executable, "-c", WITHOUT_THE_HUB], cwd=ROOT, capture_output=True, text=True, env=env, timeout=300
    )
    assert r.returncode == 0, r.stderr
    name, imagenet, seconds = r.stdout.split()
    assert (name, imagenet) == ("EfficientNet", "False") and float(seconds) < 10, r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: could not fetch ImageNet weights"), r.stderr
    assert "WEIGHTS_FILE" in lines[0] and "PRETRAINED = False" in lines[0]


def test_local_weights_file_loads_offline_into_a_new_head(tmp_path):
    imagenet = model.build_model(pretrained=False, num_classes=1000)[0]
    torch.save(imagenet.state_dict(), tmp_path / "efficientnet_b0.pth")
    net, loaded = model.build_model(weights_file=str(tmp_path / "efficientnet_b0.pth"))
    assert (
        loaded
        and torch.equal(net.conv_stem.weight, imagenet.conv_stem.weight)
        and net.get_classifier().out_features == 2
    )


def test_a_missing_or_wrong_weights_file_is_one_line(tmp_path, capsys):
    fails(
        capsys,
        f"weights file {tmp_path / 'nope.pth'} not found; download it with 'hf download "
        "timm/efficientnet_b0.ra_in1k' or set WEIGHTS_FILE = None",
        model.build_model,
        weights_file=str(tmp_path / "nope.pth"),
    )
    (tmp_path / "notes.pth").write_text("not weights")
    expected = f"could not load ImageNet weights from {tmp_path / 'notes.pth'} ("
    fails(capsys, expected, model.build_model, weights_file=str(tmp_path / "notes.pth"))
