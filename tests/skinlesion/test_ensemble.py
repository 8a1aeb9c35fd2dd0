"""skinlesion/ensemble.py: the folds' networks averaged behave as one timm network: its logits are the mean of the
members', its evidence map the mean of their maps, its familiarity features theirs side by side; a model file of
an ensemble loads back as one. (Its ONNX export and predict.py: test_AItraining.py.)"""

import numpy as np
import pytest
import torch

import model
from conftest import save_model
from skinlesion import backbone, ensemble, explain, familiarity, folds


@pytest.fixture(scope="module")
def members():
    torch.manual_seed(0)
    found = [model.build_model(pretrained=False)[0] for _ in range(3)]
    for net in found:
        torch.nn.init.normal_(net.get_classifier().weight, std=0.05)  # the neutral head would make every map zero
        torch.nn.init.normal_(net.get_classifier().bias, std=0.1)
    return [net.eval() for net in found]


def test_an_ensemble_is_one_network_whose_logits_are_the_members_mean(members):
    net = ensemble.averaged(members).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        mean = torch.stack([m(x) for m in members]).mean(0)
        assert torch.allclose(net(x), mean, atol=1e-5)
        assert torch.allclose(net.forward_head(net.forward_features(x)), mean, atol=1e-5)
    assert backbone.pooled_linear_head(net)  # what Grad-CAM and the ONNX export need
    shape = backbone.network_shape(net)
    assert shape["features"] == 3 * 1280 and shape["convs"] == 3 * backbone.network_shape(members[0])["convs"]


def test_its_evidence_map_is_the_mean_of_the_members_maps_and_its_features_are_theirs_side_by_side(members):
    """Grad-CAM of the ensemble's malignant log-odds is the mean of each member's own map (its head is their heads
    side by side, divided by three); the familiarity features are each stage's of every member side by side, then
    their pooled features, where folds.member_positions puts each member's."""
    net = ensemble.averaged(members).eval()
    x = torch.randn(1, 3, 64, 64)
    mask = np.array([False, True])
    own_maps = [explain.gradcam(member, x, mask) for member in members]
    assert explain.gradcam(net, x, mask) == pytest.approx(np.mean(own_maps, 0), rel=1e-4, abs=1e-7)
    assert np.abs(own_maps).max() > 0  # not all zero: the check means something
    with torch.no_grad():
        features = familiarity.features(net, x)[0][0].numpy()
        own = [familiarity.features(member, x)[0][0].numpy() for member in members]
    assert len(features) == familiarity.feature_count(net) == 3 * familiarity.feature_count(members[0])
    widths = [info["num_chs"] for info in members[0].feature_info] + [members[0].num_features]
    for k in range(3):
        assert features[folds.member_positions(widths, k, 3)] == pytest.approx(own[k], rel=1e-4, abs=1e-5)


def test_a_model_file_of_an_ensemble_loads_back_as_one(members, tmp_path):
    net = ensemble.averaged(members)
    path = save_model(tmp_path / "ensemble.pth", net=net, members=3)
    loaded, meta = model.load_checkpoint(path)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded(x), net.eval()(x), atol=1e-5)
    assert meta["members"] == 3 and len(loaded.members) == 3
