"""ImageNet weights from a local file (offline), or from the hub, whose absence is found
out in a moment (not after the hub client's ~46 s of retries) and is one warning."""

import os
import subprocess
import sys

import pytest
import torch

import model
from conftest import ROOT, alarm, fails
from skinlesion import backbone
from skinlesion.messages import UserError

# ---------------------------------------------------------------------------- weights
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
    assert (name, imagenet) == ("EfficientNet", "None") and float(seconds) < 10, r.stdout
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


def test_a_weights_file_of_another_architecture_is_refused_with_the_counts(tmp_path, capsys):
    """ResNet-18's tensors in B0: timm would load what fits and leave the rest random; here every tensor but the
    classifier must fit, or nothing is loaded. Counted independently from the two state dicts."""
    other = model.build_model(pretrained=False, model_name="resnet18")[0].state_dict()
    torch.save(other, tmp_path / "other.pth")
    b0 = {  # every tensor that holds a value: not the new classifier, nor BatchNorm's step counters
        k: v
        for k, v in model.build_model(pretrained=False)[0].state_dict().items()
        if not k.startswith("classifier.") and not k.endswith(".num_batches_tracked")
    }
    missing = sum(k not in other for k in b0)
    other_shape = sum(k in other and other[k].shape != v.shape for k, v in b0.items())
    assert missing and other_shape
    expected = (
        f"weights file {tmp_path / 'other.pth'} does not fit efficientnet_b0: of its {len(b0)} tensors (the classifier "
        f"and the step counters aside) {missing} are missing and {other_shape} have another shape; use the weights of "
        "timm/efficientnet_b0.ra_in1k"
    )
    fails(capsys, expected, model.build_model, weights_file=str(tmp_path / "other.pth"))


def test_a_weights_file_missing_one_tensor_is_refused_and_the_nearest_that_fits_loads(tmp_path, capsys):
    """One tensor short is refused (1 missing); the same file whole loads, and the start records its name and
    SHA-256 (hashed here independently)."""
    import hashlib

    weights = model.build_model(pretrained=False, num_classes=1000)[0].state_dict()
    torch.save(weights, tmp_path / "whole.pth")
    torch.save({k: v for k, v in weights.items() if k != "conv_stem.weight"}, tmp_path / "short.pth")
    _, err = fails(capsys, "are missing", model.build_model, weights_file=str(tmp_path / "short.pth"))
    assert "aside) 1 are missing and 0 have another shape" in err
    net, start = model.build_model(weights_file=str(tmp_path / "whole.pth"))
    digest = hashlib.sha256((tmp_path / "whole.pth").read_bytes()).hexdigest()
    assert start == dict(file="whole.pth", sha256=digest)
    assert torch.equal(net.conv_stem.weight, weights["conv_stem.weight"])


def test_an_unknown_or_unsuitable_architecture_is_one_line(capsys):
    fails(
        capsys,
        "'efficientnet_b9000' is not a timm architecture",
        model.build_model,
        False,
        model_name="efficientnet_b9000",
    )
    fails(
        capsys,
        "convnext_atto's head is not an average pool and one linear layer",
        model.build_model,
        False,
        model_name="convnext_atto",
    )


@pytest.mark.parametrize("kind", ["a named pipe", "a folder"])
def test_a_weights_file_that_is_not_a_regular_file_says_what_it_is_not_that_it_is_missing(tmp_path, capsys, kind):
    """'not found' was printed for a weights file that exists as a named pipe or a folder; a pipe is never read."""
    path = tmp_path / "weights.safetensors"
    if kind == "a named pipe":
        os.mkfifo(path)
    else:
        path.mkdir()
    expected = f"weights file {path} is {kind}, not a file of weights; pass the file itself"
    with alarm(60, "blocked on a named pipe"):
        fails(capsys, expected, model.build_model, weights_file=str(path))


def test_a_weights_file_over_the_bound_says_so_before_it_is_read(tmp_path, capsys):
    """A weights file over backbone.MAX_WEIGHTS_BYTES (sparse: no disk used) was refused as 'could not load
    ImageNet weights from ... (Unreadable)': the line now says what the file is."""
    path = tmp_path / "weights.safetensors"
    with open(path, "wb") as f:
        f.truncate(backbone.MAX_WEIGHTS_BYTES + 1)
    expected = (
        f"{path} is {backbone.MAX_WEIGHTS_BYTES + 1:,} bytes, over the {backbone.MAX_WEIGHTS_BYTES:,} it may be; use "
        "the weights of timm/efficientnet_b0.ra_in1k"
    )
    fails(capsys, expected, model.build_model, weights_file=str(path))


def trained_looking_weights():
    """ImageNet-shaped B0 weights whose every tensor differs from a fresh network's (running statistics and step
    counters included): a load that skipped any of them would show."""
    net = model.build_model(pretrained=False, num_classes=1000)[0]
    generator = torch.Generator().manual_seed(0)
    weights = {}
    for k, v in net.state_dict().items():
        if k.endswith(".num_batches_tracked"):
            weights[k] = torch.tensor(7)
        elif k.endswith(".running_var"):
            weights[k] = torch.rand(v.shape, generator=generator) + 0.5
        else:
            weights[k] = torch.randn(v.shape, generator=generator)
    return weights


@pytest.mark.parametrize("ext", [".pth", ".safetensors"])
def test_weights_without_batchnorm_step_counters_load_and_a_missing_running_mean_is_refused(tmp_path, capsys, ext):
    """Converted and published weights often lack num_batches_tracked (PyTorch's own strict load of such a table
    accepts it): every tensor that holds a learned or running value is loaded, compared here tensor by tensor; the
    same file without one running_mean is refused."""
    from safetensors.torch import save_file

    weights = trained_looking_weights()
    counters = [k for k in weights if k.endswith(".num_batches_tracked")]
    values = {k: v for k, v in weights.items() if k not in counters}
    assert len(counters) == 49 and len(values) == len(weights) - 49
    short = {k: v for k, v in values.items() if k != "blocks.1.0.bn1.running_mean"}
    for name, tensors in [("plain", values), ("short", short)]:
        if ext == ".pth":
            torch.save(tensors, tmp_path / f"{name}{ext}")
        else:
            save_file(tensors, str(tmp_path / f"{name}{ext}"))
    net, start = model.build_model(weights_file=str(tmp_path / f"plain{ext}"))
    assert start["file"] == f"plain{ext}"
    loaded = net.state_dict()
    for k, v in values.items():
        if not k.startswith("classifier."):
            assert torch.equal(loaded[k], v), k
    assert all(loaded[k] == 0 for k in counters)  # counts, not values: they start at 0
    assert not loaded["classifier.weight"].any()  # the new head, neutral
    _, err = fails(capsys, "are missing", model.build_model, weights_file=str(tmp_path / f"short{ext}"))
    assert "aside) 1 are missing and 0 have another shape" in err


def test_the_architectures_own_refusal_passes_the_download_fallback_unchanged(monkeypatch, capsys):
    """A hub download that fails in any way (its error type varies) is one warning and random weights; a UserError
    that create raises itself (a head the evidence map cannot use) is no failed download: it passes through as it
    was raised, with no warning and no second try (issue 30: the package raises, a library's catch-all must not
    reword or swallow it)."""
    monkeypatch.setattr(backbone, "offline_unless_reachable", lambda: None)  # no probe of the network
    made, refusal = [], "its head is not an average pool and one linear layer; pick another timm architecture"

    def refuses(pretrained):
        made.append(pretrained)
        raise UserError(refusal)

    _, err = fails(capsys, refusal, backbone.imagenet_model, refuses, "efficientnet_b0")
    assert made == [True] and err == f"error: {refusal}\n", (made, err)

    def no_hub(pretrained):
        made.append(pretrained)
        if pretrained:
            raise RuntimeError("no route to the hub")
        return "randomly started network"

    made.clear()
    assert backbone.imagenet_model(no_hub, "efficientnet_b0") == ("randomly started network", None)
    err = capsys.readouterr().err
    assert made == [True, False] and err.count("\n") == 1, (made, err)
    assert err.startswith("warning: could not fetch ImageNet weights for efficientnet_b0 (RuntimeError"), err
