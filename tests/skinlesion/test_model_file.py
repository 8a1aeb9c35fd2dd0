"""skinlesion/model_file.py: what a model file holds (the table of its keys, each with a shape check), how it is
written and read back, and how a broken one, one that is not ours or one whose weights do not fit is refused, by
every script, in one line (read through model.load_checkpoint, the one call a script makes)."""

import json
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
import model
import predict
import serve_web
from conftest import (
    RunsCode,
    alarm,
    fails,
    fingerprint,
    main_fails,
    make_split_tree,
    save_model,
)
from skinlesion import answer, familiarity, ledger, model_file


@pytest.fixture(scope="module")
def net():
    return model.build_model(pretrained=False)[0]


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
        key, value = fault.split("=", 1)
        state["meta"][key] = eval(value)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    return str(path)


def load_refused(load, path, capsys, expected):
    """load(path) stops with one error line that says expected."""
    fails(capsys, expected, load, path)


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
    "std=[0.2, 0.0, 0.2]": "its std[1] 0.0 is not a number from 1e-06 to 10",
    "mean=[0.5]": "its mean [0.5] is not a list of 3 items, each a number from -10 to 10",
    "interpolation='lanczos'": "its interpolation 'lanczos' is not bicubic, bilinear or nearest",
    "crop_pct=0": "its crop_pct 0 is not a number from 0.05 to 1",
    "at_chance='no'": "its at_chance 'no' is not true or false or null",
    "3 classes": "it is a model for classes ['benign', 'malignant', 'indeterminate']",
    "no threshold": "no threshold in its metadata",
    "model_name='resnet18'": "its network {'architecture': 'efficientnet_b0', 'features': 1280, 'stride': 32, "
    "'convs': 81} is not resnet18's",
    "model_name='Resnet 18!'": "its model_name 'Resnet 18!' is not a timm name",
    "imagenet={'file': 'w.pth'}": "its imagenet {'file': 'w.pth'} is not true, false or where the weights came from",
}


@pytest.fixture(scope="module")
def good_model(tmp_path_factory):
    """A good model file (save_model's network, 64 px), written once for the module's tests to break copies of."""
    return save_model(tmp_path_factory.mktemp("good") / "good.pth", size=64)


@pytest.mark.parametrize("fault", META_FAULTS)
def test_a_broken_model_file_is_refused_when_loaded(good_model, tmp_path, capsys, fault):
    path = broken(good_model, tmp_path, fault)
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
    ledger.record_file(path, "resume checkpoint")  # as a diverged run of ours wrote it: --resume may replace it
    monkeypatch.chdir(tmp_path)
    shutil.copyfile(good, "skin_model.pth")  # the previous best model, as AItraining.py wrote it here
    ledger.record_file("skin_model.pth", "model")
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
    resnet = timm.create_model("resnet18", num_classes=2)  # its weights, under metadata that names B0
    state = model_file.checkpoint_state(resnet, model.data_config(resnet, 64))
    state["meta"] = dict(state["meta"], model_name="efficientnet_b0")
    del state["meta"]["network"]
    model_file.save_checkpoint(str(tmp_path / "resnet.pth"), state)
    for name, expected in [
        ("truncated.pth", "not a readable checkpoint"),
        ("runs code.pth", "refusing to load"),
        ("3 outputs.pth", "the weights do not fit efficientnet_b0 with 2 classes"),
        ("resnet.pth", "the weights do not fit efficientnet_b0"),
        ("missing.pth", "not found"),
    ]:
        load_refused(model.load_checkpoint, str(tmp_path / name), capsys, expected)
    assert not (tmp_path / "code ran").exists(), "unpickling the checkpoint ran its code"


def hostile_model_file(path, kind):
    """A model file path that is not one to read: a link to /dev/zero (never ends), a named pipe (never opened
    without a writer), or a regular file one byte over the bound (sparse: no disk is used)."""
    if kind == "a link to /dev/zero":
        os.symlink("/dev/zero", path)
        return "is a device"
    if kind == "a named pipe":
        os.mkfifo(path)
        return "is a named pipe"
    with open(path, "wb") as f:
        f.truncate(model_file.MAX_MODEL_BYTES + 1)
    return f"is {model_file.MAX_MODEL_BYTES + 1:,} bytes, over the {model_file.MAX_MODEL_BYTES:,} a model file may be"


@pytest.mark.parametrize("kind", ["a link to /dev/zero", "a named pipe", "over the bound"])
def test_a_model_file_that_is_a_device_a_pipe_or_too_large_is_one_line_in_every_script(
    scripts_setup, tmp_path, capsys, kind
):
    """Every script that reads a model file (.pth or .onnx) says in one line what the file is, at once: a link to
    /dev/zero or a named pipe is never read, a file over the bound is refused before it is read (an ONNX file
    was read whole, a .pth too where torch could not load it)."""
    _, data, _ = scripts_setup
    pth, onnx_file = str(tmp_path / "model.pth"), str(tmp_path / "model.onnx")
    said = hostile_model_file(pth, kind)
    hostile_model_file(onnx_file, kind)
    photo = os.path.join(data, "test", "benign", os.listdir(os.path.join(data, "test", "benign"))[0])
    cases = [
        (predict.main, [photo, "--model", pth], pth),
        (predict.main, [photo, "--model", onnx_file], onnx_file),
        (evaluate.main, ["--model", pth, "--data-dir", os.path.join(data, "test"), "--output-dir", tmp_path], pth),
        (export_onnx.main, ["--model", pth, "--output", tmp_path / "out.onnx"], pth),
        (serve_web.main, ["--model", onnx_file, "--no-serve", "--site-dir", tmp_path / "site"], onnx_file),
    ]  # AItraining.py --resume reads it as load_checkpoint does (the next test)
    with alarm(60, "a script read a model file that never ends"):
        for main, argv, path in cases:
            out = main_fails(main, argv, capsys, f"model file {path} {said}")
            assert "Prediction" not in out
    assert not os.path.exists(tmp_path / "site") and not os.path.exists(tmp_path / "out.onnx")


@pytest.mark.parametrize("kind", ["a link to /dev/zero", "a named pipe", "over the bound"])
def test_a_model_file_that_turns_into_a_device_after_its_check_is_never_read(tmp_path, monkeypatch, capsys, kind):
    """What was checked is what is read: a file replaced after check_model_file looked (here: no look at all) is
    checked again once open, and is one line, never an endless read or a wait for a writer."""
    monkeypatch.setattr(model_file, "check_model_file", lambda *args, **kwargs: None)
    pth, onnx_file = str(tmp_path / "model.pth"), str(tmp_path / "model.onnx")
    said = hostile_model_file(pth, kind).replace("a model file may be", "it may be")
    hostile_model_file(onnx_file, kind)
    said = said if kind == "over the bound" else said + ", not a regular file"
    with alarm(60, "a model file was read without end"):
        load_refused(model.load_checkpoint, pth, capsys, f"model file {pth} {said}; pass the model file")
        assert model.read_onnx(onnx_file)[:2] == (None, None)
        assert model.read_onnx(onnx_file)[2] == f"model file {onnx_file} {said}; export one with export_onnx.py"


STRICT_CASES = {  # how the weights differ from the network's: (missing, not its own, of another shape)
    "a running_mean missing": (1, 0, 0),
    "a weight missing": (1, 0, 0),
    "an extra tensor": (0, 1, 0),
    "one renamed": (1, 1, 0),
    "as saved": None,  # the nearest that must load
}


@pytest.mark.parametrize("case", STRICT_CASES)
def test_a_model_files_weights_load_strictly(scripts_setup, tmp_path, capsys, case):
    """Every tensor of the network and no other: one missing, one extra or one renamed is refused with the counts
    (a lenient load would leave a tensor at its random start, or take one that belongs to nothing); the file as
    saved loads, every tensor equal."""
    _, _, good = scripts_setup
    state = torch.load(good, weights_only=True)
    weights = state["state_dict"]
    if case == "a running_mean missing":
        del weights["blocks.2.0.bn1.running_mean"]
    elif case == "a weight missing":
        del weights["conv_head.weight"]
    elif case == "an extra tensor":
        weights["head.extra.weight"] = torch.ones(3)
    elif case == "one renamed":
        weights["conv_stem.weights"] = weights.pop("conv_stem.weight")
    path = str(tmp_path / "model.pth")
    torch.save(state, path)
    if STRICT_CASES[case] is None:
        net, _ = model.load_checkpoint(path)
        loaded = net.state_dict()
        assert loaded.keys() == weights.keys() and all(torch.equal(loaded[k], v) for k, v in weights.items())
        return
    missing, extra, other = STRICT_CASES[case]
    expected = (
        f"{path}: the weights do not fit efficientnet_b0 with 2 classes ({missing} of its tensors missing, {extra} "
        f"not its own, {other} of another shape: another architecture or count)"
    )
    load_refused(model.load_checkpoint, path, capsys, expected)


def test_checkpoint_round_trip_keeps_weights_and_metadata(tmp_path, net):
    cfg = model.data_config(net, 96)
    path = str(tmp_path / "m.pth")
    model_file.save_checkpoint(
        path,
        model_file.checkpoint_state(
            net, cfg, 0.3, val_metrics={"roc_auc": 0.9}, epoch=4, at_chance=False, manifest_sha256="ab" * 32
        ),
    )
    assert sorted(os.listdir(tmp_path)) == [ledger.NAME, "m.pth"]  # the temporary file was renamed away
    loaded, meta = model.load_checkpoint(path)
    for (k, a), b in zip(net.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k
    assert not loaded.training and meta["classes"] == ["benign", "malignant"] and meta["image_size"] == 96
    assert meta["threshold"] == 0.3 and meta["epoch"] == 4 and meta["val_metrics"]["roc_auc"] == 0.9
    assert (
        meta["manifest_sha256"] == "ab" * 32
        and "torch" in meta["versions"]
        and model_file.meta_data_config(meta) == cfg
    )


CALIBRATION = dict(method="platt", a=1.0, b=0.0, val_log_loss_before=0.6, val_log_loss_after=0.5, val_ece_before=0.1,
                   val_ece_after=0.05)  # fmt: skip
TYPE_FAULTS = {  # a change to a good lesion-type model's metadata: what the error line says
    "classes=['nevus']": "its classes ['nevus'] are not two or more different names",
    "classes=['nevus', 'nevus', 'melanoma']": "its classes ['nevus', 'nevus', 'melanoma'] are not two or more",
    "malignant_classes=['melanoma', 'nevus', 'bcc']": "its malignant_classes ['melanoma', 'nevus', 'bcc'] are not some",
    "malignant_classes=['angioma']": "its malignant_classes ['angioma'] are not some, not all, of its classes",
    "val_auc_ci95=['0.6', '0.9']": "its val_auc_ci95[0] '0.6' is not a number from 0 to 1",
    "calibration={'a': -1.0, 'b': 0.0}": "its calibration {'a': -1.0, 'b': 0.0} is not a table with method, val_log",
    "calibration=dict(CALIBRATION, a=-1.0)": "its calibration.a -1.0 is not a number from 1e-06 to 1e+06",
    "val_metrics={'roc_auc': 'high'}": "its val_metrics['roc_auc'] 'high' is not a finite number",
    "operating_point=[0.5]": "its operating_point [0.5] is not a table with target_sensitivity",
    "prior_malignant=1.0": "its prior_malignant 1.0 is not a number from 1e-06 to",
    "val_types={'balanced_accuracy': 0.6, 'types': {'nevus': 'good'}}": "its val_types",
}


@pytest.fixture(scope="module")
def good_types_model(tmp_path_factory):
    """A good lesion-type model file (3 classes, 2 of them malignant), written once; it loads."""
    net = model.build_model(pretrained=False, num_classes=3)[0]
    path = save_model(
        tmp_path_factory.mktemp("types") / "types.pth",
        net=net,
        classes=["nevus", "melanoma", "bcc"],
        malignant_classes=["melanoma", "bcc"],
    )
    model.load_checkpoint(path)  # the good one loads
    return path


@pytest.mark.parametrize("fault", TYPE_FAULTS)
def test_metadata_of_the_wrong_type_is_refused(good_types_model, tmp_path, capsys, fault):
    path = broken(good_types_model, tmp_path, fault)
    load_refused(model.load_checkpoint, path, capsys, f"{path} is refused: {TYPE_FAULTS[fault]}")


# ---------------------------------------------------------------------------- the table of the model file's keys
OPERATING_POINT = dict(target_sensitivity=0.9, threshold=0.4, sensitivity=0.9, sensitivity_ci95=[0.8, 0.95],
                       specificity=0.6, specificity_ci95=[0.5, 0.7], n_malignant=30, n_benign=120)  # fmt: skip
SETTINGS = dict(recipe="finetune", why="ImageNet weights loaded", **model.RECIPES["finetune"], batch_size=32,
                image_size=224, seed=42, target_sensitivity=0.9, amp=False, run="20260101-120000")  # fmt: skip
DATA = dict(source="dataset", counts={"train": {"nevus": 5, "melanoma": 2}}, grouping="lesion_id",
            factors={"sex": {"train": {"female": 4, "unknown": 3}}}, attributions={"Hospital Clínic de Barcelona": 7},
            licences={"CC-BY-NC": 7}, label_column="diagnosis_3", synthetic=False)  # fmt: skip
SUMMARY = dict(trained_on="7 ISIC photos", how_well="validation ROC-AUC 0.9", intended_use="research", limits=["x"])


def full_meta():
    """Metadata holding every key of model_file.KEYS, each as its writer gives it (what an ONNX export holds). Class
    names with a comma, an accent and a space are fine."""
    return dict(
        written_by="skin-lesion classifier", format=2, model_name="efficientnet_b0", classes=["nevus", "melanoma"],
        malignant_classes=["melanoma"], class_names=["Nevus, NOS", "Mélanome invasif"], image_size=64,
        mean=[0.5] * 3, std=[0.25] * 3, interpolation="bicubic", crop_pct=0.875, threshold=0.4,
        calibration=dict(CALIBRATION, cv_log_loss={"temperature": 0.5, "platt": None}),
        operating_point=OPERATING_POINT, val_metrics={"roc_auc": 0.9, "tp": 27}, val_auc_ci95=[0.8, 0.95],
        at_chance=False, epoch=3, imagenet=True, manifest_sha256="ab" * 32, versions={"torch": "2.4.0"},
        settings=SETTINGS, data=DATA, source_checkpoint="skin_model.pth", source_sha256="cd" * 32,
        outputs=list(model_file.ONNX_OUTPUTS), exporter="torch.onnx dynamo", card_summary=SUMMARY,
        self_check=dict(inputs=1, logits=[[0.1, -0.1]], p_malignant=[0.45], cam=[[[0.5, -0.5], [0.0, 1.5]]],
                        familiarity_distance=[80.0]),
        network=dict(architecture="efficientnet_b0", features=1280, stride=32, convs=81), prior_malignant=0.5,
        val_types=dict(balanced_accuracy=0.7, balanced_accuracy_ci95=[0.6, 0.8], chance=0.5,
                       types={"nevus": dict(sensitivity=0.8, sensitivity_ci95=[0.7, 0.9], photos=20)}),
        familiarity=dict(method="mahalanobis", limit=40.0, quantile=0.99, image_types=["dermoscopic"],
                         val_within=0.99, n_val=90),
        quantised=dict(photos=40, max_p_difference=0.01, label_changes=1, label_changes_outside_band=0,
                       roc_auc_full=0.9, roc_auc_int8=0.899, max_auc_drop=0.005, within_tolerance=True,
                       from_sha256="ef" * 32, photos_from="val", familiar_to_unfamiliar=1, unfamiliar_to_familiar=0,
                       familiarity_flips_outside_band=0, familiarity_band=0.05, max_distance_change=0.04),
        folds=dict(k=5, photos=340, deployed="ensemble", epochs=[7, 8, 6, 9, 7]), members=5,
    )  # fmt: skip


def without(table, key):
    return {k: v for k, v in table.items() if k != key}


BAD_VALUES = {  # key: values of the wrong shape, each refused at load (the nearest good ones are in full_meta)
    "written_by": ["", 5, "ours\n"],
    "format": [0, 2.0, "2", None],
    "model_name": [["efficientnet_b0"], "resnet18", "efficientnet_b0\r"],
    "classes": [["nevus"], ["nevus", 3], ["nevus", "mel\x1b[2J"], "nevus,melanoma", ["n" * 101, "melanoma"]],
    "malignant_classes": [["bcc"], [], "melanoma", ["nevus", "melanoma"]],
    "class_names": [["Nevus"], ["Nevus", 5], ["Nevus", "Melanoma\rPrediction: benign"], ["Nevus", "a\u202eb"], None],
    "image_size": [224.0, 16, True],
    "mean": [[0.5] * 2, [0.5, 0.5, "0.5"]],
    "std": [[0.5, 0.5, 0.0]],
    "interpolation": ["lanczos", None],
    "crop_pct": [0, 1.5],
    "threshold": [1.5, "0.5", None, float("nan")],
    "calibration": [dict(CALIBRATION, a=0.0), without(CALIBRATION, "b"), dict(CALIBRATION, method="isotonic"),
                    dict(CALIBRATION, val_ece_after="low"), dict(CALIBRATION, cv_log_loss=[0.5]), "platt"],
    "operating_point": [without(OPERATING_POINT, "sensitivity"), dict(OPERATING_POINT, sensitivity_ci95=[0.8]),
                        dict(OPERATING_POINT, n_benign=-1), dict(OPERATING_POINT, n_malignant=2.5),
                        dict(OPERATING_POINT, specificity=None), None, [0.5]],
    "val_metrics": [{"roc_auc": "high"}, [0.9], {"roc_auc": float("nan")}, {"": 0.9}],
    "val_auc_ci95": [[0.5], ["0.6", "0.9"], None],
    "at_chance": ["no", 1],
    "epoch": [-1, 1.5],
    "imagenet": ["yes"],
    "manifest_sha256": ["abc", "AB" * 32],
    "versions": [{"torch": 2}, "2.4.0"],
    "settings": [dict(SETTINGS, output="model.py"), without(SETTINGS, "epochs"), dict(SETTINGS, lr="1e-4"),
                 dict(SETTINGS, epochs=2.5), dict(SETTINGS, recipe="mine"), None],
    "data": ["dataset", dict(DATA, counts={"train": {"nevus": "5"}}), dict(DATA, attributions=["a"]),
             dict(DATA, factors={"sex": {"train": {"f\n": 3}}}), dict(DATA, source="a\x1b]0;x\x07"),
             dict(DATA, synthetic="no")],
    "source_checkpoint": ["", "a\nb"],
    "source_sha256": ["x", None],
    "outputs": [["logits", "p_malignant"]],
    "exporter": [3],
    "card_summary": [without(SUMMARY, "limits"), dict(SUMMARY, limits="none"), dict(SUMMARY, how_well=""), "text"],
    "self_check": [dict(inputs=1, logits="x", p_malignant=[0.5]), dict(inputs=1, logits=[[0.1]], p_malignant=[1.5]),
                   {}, dict(full_meta()["self_check"], cam=[[0.5, -0.5]]),
                   dict(full_meta()["self_check"], familiarity_distance=[float("nan")])],
    "network": [dict(architecture="resnet18", features=512, stride=32, convs=20), "efficientnet_b0",
                dict(architecture="efficientnet_b0", features=1280, stride=32, convs=0)],
    "prior_malignant": [1.0, 0.0, "0.5"],
    "familiarity": [dict(method="knn", limit=4.0, quantile=0.99, image_types=[], val_within=1.0, n_val=9), 40.0],
    "val_types": [dict(balanced_accuracy=0.7), "good", dict(balanced_accuracy=0.7, balanced_accuracy_ci95=[0.6, 0.8],
                  chance=0.5, types={"nevus": dict(sensitivity="high", sensitivity_ci95=[0.7, 0.9], photos=20)})],
    "quantised": [dict(photos=40), dict(photos=40, max_p_difference=0.01, label_changes=1, label_changes_outside_band=0,
                  roc_auc_full=0.9, roc_auc_int8=0.899, max_auc_drop=0.005, within_tolerance="yes",
                  from_sha256="ef" * 32, photos_from="val"),
                  dict(full_meta()["quantised"], familiar_to_unfamiliar=-1),
                  dict(full_meta()["quantised"], max_distance_change=float("nan"))],
    "folds": [dict(k=1, photos=340, deployed="refit", epochs=[7]), dict(k=5, photos=340, deployed="both", epochs=[7]),
              dict(k=5, photos=340, deployed="refit", epochs=[0]), dict(k=5, photos=340, deployed="refit"), "5"],
    "members": [1, 2.0, 21, "5"],
}  # fmt: skip


def test_every_key_of_the_model_file_is_in_the_table_with_a_shape_check():
    """The table is the contract: every key has a test of wrong values here, and a file holding each key as its
    writer gives it is accepted."""
    assert set(full_meta()) == set(model_file.KEYS) == set(BAD_VALUES)
    assert model_file.meta_fault(full_meta(), "onnx") is None
    assert model_file.meta_fault(dict(full_meta(), at_chance=None, calibration=None, manifest_sha256=None)) is None
    for key, values in BAD_VALUES.items():
        for value in values:
            fault = model_file.meta_fault(dict(full_meta(), **{key: value}), "onnx")
            assert fault and (key in fault or str(value) in fault), (key, value, fault)


def test_required_keys_are_what_every_file_holds_and_export_keys_only_onnx():
    required = [key for key, row in model_file.KEYS.items() if row.required and row.onnx != "export"]
    assert required == ["classes", "image_size", "mean", "std", "interpolation", "crop_pct", "threshold"]
    pth = {key: value for key, value in full_meta().items() if model_file.KEYS[key].onnx != "export"}
    assert model_file.meta_fault(pth) is None
    assert model_file.meta_fault(pth, "onnx").startswith("no source_checkpoint, source_sha256, outputs, exporter")
    for key in required:
        assert model_file.meta_fault(without(pth, key)) == f"no {key} in its metadata"


@pytest.mark.parametrize("meta", ["full", "required keys only", "edges"])
def test_metadata_that_passes_the_checks_crashes_no_reader(meta, capsys):
    """The card, its summary, predict.py's cautions and type lines and the page's operating-point texts read any
    metadata the table accepts."""
    from skinlesion import card, metrics

    full = full_meta()
    required = [key for key, row in model_file.KEYS.items() if row.required and row.onnx != "export"]
    chosen = {
        "full": full,
        "required keys only": {key: full[key] for key in required},
        "edges": dict(full, at_chance=True, val_auc_ci95=[0.0, 1.0], calibration=None, data={}, val_metrics={},
                      operating_point=dict(OPERATING_POINT, sensitivity=0.0, specificity=0.0), versions={}),
    }[meta]  # fmt: skip
    if meta == "required keys only":
        chosen["classes"] = model.CLASSES
    assert model_file.meta_fault(chosen) is None
    text = card.render(chosen, "m.pth")
    assert card.summary(chosen)["limits"] and "# Model card: m.pth" in text
    assert isinstance(answer.model_cautions(chosen), list)
    names = [name for name, _ in answer.likely_types(np.full(len(chosen["classes"]), 0.5), chosen)]
    assert sorted(names) == sorted(chosen.get("class_names") or chosen["classes"])
    if chosen.get("operating_point"):
        assert metrics.operating_point_text(chosen["operating_point"])


def test_a_resume_file_cannot_set_flags_outside_the_run_settings(tmp_path, capsys):
    """settings is restored into the flags by --resume: a key that is not a run setting (--output) is refused."""
    path = save_model(tmp_path / "last.pth", settings=SETTINGS, epoch=1)
    assert model_file.read_checkpoint(path)["meta"]["settings"] == SETTINGS
    state = torch.load(path, weights_only=True)
    state["meta"]["settings"] = dict(SETTINGS, output="model.py")
    torch.save(state, tmp_path / "crafted.pth")
    expected = "its settings {'recipe': 'finetune'"
    load_refused(model_file.read_checkpoint, str(tmp_path / "crafted.pth"), capsys, expected)
    assert list(model_file.RUN_SETTINGS) == AItraining.SETTINGS


def test_a_model_file_that_would_be_refused_is_never_written(tmp_path):
    net = model.build_model(pretrained=False)[0]
    cfg = model.data_config(net, 64)
    with pytest.raises(ValueError, match="its class_names"):
        model_file.checkpoint_state(net, cfg, class_names=["benign\x1b[2J", "malignant"])
    with pytest.raises(ValueError, match="not in model_file.KEYS"):
        model_file.checkpoint_state(net, cfg, my_key=1)
    assert not list(tmp_path.iterdir())


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


def test_a_model_file_is_ours_by_its_record_not_by_its_keys(tmp_path):
    """save_checkpoint records the file as its kind; a copy of our checkpoint (all its keys, the tag) is not ours
    where we did not write it, and a resume checkpoint is not a model."""
    ours = save_model(tmp_path / "ours.pth", size=64)
    state = torch.load(ours, weights_only=True)
    model_file.save_checkpoint(str(tmp_path / "ours_last.pth"), state, "resume checkpoint")
    shutil.copyfile(ours, tmp_path / "copied.pth")
    assert ledger.why_not_ours(ours, "model") is None
    assert ledger.why_not_ours(str(tmp_path / "ours_last.pth"), "model") == "resume checkpoint"
    assert ledger.why_not_ours(str(tmp_path / "copied.pth"), "model") == "no record"


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
        network=dict(architecture="efficientnet_b0", features=1280, stride=32, convs=81),
    )
    b0 = "efficientnet_b0 with 2 classes (81 convolutions, a 1280-wide classifier; it has 0 convolutions)"
    cases = {
        "resnet50": (dict(meta, model_name="resnet50"), None, "its network {'architecture': 'efficientnet_b0'"),
        "ours in name only": (meta, None, f"its graph is not {b0}"),
        "no network": (
            {k: v for k, v in meta.items() if k != "network"},
            None,
            "its metadata does not say its network",
        ),
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
    "found['limit'] = -1.0": "its familiarity.limit -1.0 is not a number from 0 to",
    "found['method'] = 'knn'": "its familiarity.method 'knn' is not mahalanobis",
    "found['image_types'] = 'dermoscopic'": "its familiarity.image_types 'dermoscopic' is not a list",
}


@pytest.fixture(scope="module")
def familiar_file(tmp_path_factory):
    """A good model file with a familiarity measure and its arrays, written once: it loads with them."""
    path = save_model(tmp_path_factory.mktemp("familiar") / "good.pth", size=64, familiarity=dict(FAMILIARITY))
    ckpt = torch.load(path, weights_only=True)
    rng = np.random.default_rng(0)
    ckpt["familiarity"] = familiarity.state(dict(means=rng.normal(0, 1, (2, 1792)), whitening=np.eye(1792)))
    torch.save(ckpt, path)
    net, meta = model.load_checkpoint(path)
    assert meta["familiarity"]["whitening"].shape == (1792, 1792) and meta["familiarity"]["limit"] == 20.0
    return path


@pytest.mark.parametrize("fault", FAMILIARITY_FAULTS)
def test_a_broken_familiarity_measure_is_refused_and_a_good_one_loads_with_its_arrays(
    familiar_file, tmp_path, capsys, fault
):
    """A model file's familiarity measure (skinlesion/familiarity.py) is checked as its weights are: a broken one
    refuses the model (a photo must never be called familiar by a broken measure); the good one loads (the
    fixture)."""
    path = str(tmp_path / "broken.pth")
    ckpt = torch.load(familiar_file, weights_only=True)
    names = dict(arrays=ckpt["familiarity"], found=ckpt["meta"]["familiarity"])
    names["whitening"] = names["arrays"]["whitening"]
    exec(fault, {}, names)
    if "means" in names["arrays"]:
        names["arrays"]["whitening"] = names["whitening"]
    torch.save(ckpt, path)
    load_refused(model.load_checkpoint, path, capsys, f"{path} is refused: {FAMILIARITY_FAULTS[fault]}")


SHAPE_CASES = {  # how one tensor's shape differs from the network's: the weights as saved, changed
    "classifier for 3 classes": lambda weights: torch.zeros(3, weights["classifier.weight"].shape[1]),
    "conv_stem reshaped, the same numbers": lambda weights: weights["conv_stem.weight"].reshape(32, 27, 1, 1),
}


@pytest.mark.parametrize("case", SHAPE_CASES)
def test_a_weight_of_another_shape_is_refused_in_one_line_that_counts_it(scripts_setup, tmp_path, capsys, case):
    """Every key of the network present and no other, but one tensor of another shape (a head for another class
    count; a tensor reshaped, as many numbers): refused with the count, one line, no traceback. Kills the shape
    count reported as 0 (or compared by numel, not shape) in model_file.load_weights, and a load that copies what fits
    (`strict=False` with shapes filtered), which STRICT_CASES (names only, every shape equal) lets through."""
    _, _, good = scripts_setup
    state = torch.load(good, weights_only=True)
    name = "classifier.weight" if case.startswith("classifier") else "conv_stem.weight"
    state["state_dict"][name] = SHAPE_CASES[case](state["state_dict"])
    path = str(tmp_path / "model.pth")
    torch.save(state, path)
    expected = (
        f"{path}: the weights do not fit efficientnet_b0 with 2 classes (0 of its tensors missing, 0 not its own, "
        "1 of another shape: another architecture or count)"
    )
    load_refused(model.load_checkpoint, path, capsys, expected)
