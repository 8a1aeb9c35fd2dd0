"""model.py: the network and its recipes, flags, what a model file holds and how a broken one is refused (by
every script), finding and reading photos, the folder layout, atomic writes, preprocessing, metrics."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import AItraining
import evaluate
import export_onnx
import model
import predict
from conftest import ROOT, assert_one_error, fingerprint, lesion_photo, make_split_tree, save_model
from skinlesion import cli, dataset, files, photos

SCRIPTS = [
    "prepare_dataset.py",
    "make_demo_data.py",
    "AItraining.py",
    "evaluate.py",
    "predict.py",
    "export_onnx.py",
    "bench.py",
    "serve_web.py",
]


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


def test_offline_pretrained_falls_back_with_one_warning():
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            "import model; net, imagenet = model.build_model(pretrained=True); print(type(net).__name__, imagenet)",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
        timeout=300,
    )
    assert r.returncode == 0 and r.stdout.split() == ["EfficientNet", "False"], r.stderr
    warnings = [line for line in r.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "WEIGHTS_FILE" in warnings[0] and "PRETRAINED = False" in warnings[0]


def test_local_weights_file_loads_offline_into_a_new_head(tmp_path, capsys):
    imagenet = model.build_model(pretrained=False, num_classes=1000)[0]
    torch.save(imagenet.state_dict(), tmp_path / "efficientnet_b0.pth")
    net, loaded = model.build_model(weights_file=str(tmp_path / "efficientnet_b0.pth"))
    assert (
        loaded
        and torch.equal(net.conv_stem.weight, imagenet.conv_stem.weight)
        and net.get_classifier().out_features == 2
    )
    with pytest.raises(SystemExit):
        model.build_model(weights_file=str(tmp_path / "nope.pth"))
    assert_one_error(1, capsys.readouterr().err, "hf download timm/efficientnet_b0.ra_in1k")


# ---------------------------------------------------------------------------- flags
def test_flags_come_from_the_constants_with_their_comments():
    args = AItraining.parse_args(["--epochs", "5", "--no-pretrained", "--weights-file", "none"])
    assert (
        args.epochs == 5
        and args.lr is None
        and args.pretrained is False
        and args.weights_file is None
        and args.image_size == 224
    )
    assert args.given == {"epochs", "pretrained", "weights_file"}
    r = subprocess.run(
        [sys.executable, "AItraining.py", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert (
        "--image-size IMAGE_SIZE" in r.stdout and "128 trains ~3x faster" in r.stdout and "(default: 224)" in r.stdout
    )


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_answers_before_torch_is_imported(script):
    """Every script takes its flags from its constants, and --help never waits for torch (~4 s)."""
    code = (
        f"import runpy, sys\nsys.argv = [{script!r}, '--help']\n"
        f"try:\n    runpy.run_path({script!r}, run_name='__main__')\n"
        "except SystemExit:\n    pass\nprint('TORCH' if 'torch' in sys.modules else 'NO TORCH')"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.stdout.strip().endswith("NO TORCH") and "(default: " in r.stdout, r.stdout + r.stderr


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
    with pytest.raises(SystemExit):
        model.load_checkpoint(path)
    assert_one_error(1, capsys.readouterr().err, f"{path} is refused: {META_FAULTS[fault]}")


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
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        out, err = capsys.readouterr()
        assert_one_error(exit_info.value.code, err, f"{path} is refused: {META_FAULTS[fault]}")
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
        with pytest.raises(SystemExit):
            model.load_checkpoint(str(tmp_path / name))
        assert_one_error(1, capsys.readouterr().err, expected)
    assert not (tmp_path / "code ran").exists(), "unpickling the checkpoint ran its code"


class RunsCode:
    """Unpickling this runs a shell command (touch marker): what a malicious 'checkpoint' does."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


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


# ---------------------------------------------------------------------------- files, folders, writes
def test_find_images_reads_only_regular_image_files(tmp_path, capsys):
    lesion_photo(tmp_path / "photos" / "b.jpg")
    lesion_photo(tmp_path / "photos" / "sub" / "a.PNG")
    lesion_photo(tmp_path / "photos" / "a_gradcam.png")
    (tmp_path / "photos" / "notes.txt").write_text("not a photo")
    os.mkfifo(tmp_path / "photos" / "pipe.jpg")  # opening it would wait forever
    images, skipped = photos.find_images([str(tmp_path / "photos")])
    assert [os.path.relpath(p, tmp_path / "photos") for p in images] == ["b.jpg", "sub/a.PNG"]
    assert {os.path.basename(f): why for f, why in skipped} == {
        "a_gradcam.png": "a Grad-CAM picture written by predict.py --explain",
        "pipe.jpg": "a named pipe",
        "notes.txt": f"not an image file ({', '.join(photos.IMAGE_EXTS)})",
    }
    with pytest.raises(OSError, match="a named pipe"):
        photos.load_image(tmp_path / "photos" / "pipe.jpg")
    for path, expected in [
        (tmp_path / "nope", "nope not found"),
        (tmp_path / "photos" / "pipe.jpg", "is a named pipe"),
    ]:
        with pytest.raises(SystemExit):
            photos.find_images([str(path)])
        assert_one_error(1, capsys.readouterr().err, expected)


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing", "data folder {d} not found; make it with 'python prepare_dataset.py'"),
        ("no malignant", "{d} has no malignant/; it must hold exactly one folder per class, benign/ and malignant/"),
        ("extra folder", "{d} has the extra .ipynb_checkpoints/; it must hold exactly one folder per class"),
        ("empty class", "{d}: no images in malignant/; both classes are needed"),
    ],
)
def test_one_class_folder_layout_check(tmp_path, capsys, case, expected):
    d = tmp_path / "test"
    if case != "missing":
        lesion_photo(d / "benign" / "a.jpg")
        os.makedirs(d / "malignant")
        (d / "malignant" / "readme.txt").write_text("no photos here")
    if case == "no malignant":
        shutil.rmtree(d / "malignant")
    if case == "extra folder":
        lesion_photo(d / "malignant" / "b.jpg")
        lesion_photo(d / ".ipynb_checkpoints" / "c.jpg")
    with pytest.raises(SystemExit):
        dataset.class_folders(str(d))
    assert_one_error(1, capsys.readouterr().err, expected.format(d=d))


def test_atomic_write_keeps_the_previous_file_and_cleans_only_dead_temporaries(tmp_path, capsys):
    target = tmp_path / "out.csv"
    target.write_text("previous")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / f"out.csv.tmp{int(dead.stdout)}").write_text("left by a killed run")

    def fails(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(SystemExit):
        files.atomic_write(str(target), fails)
    assert_one_error(1, capsys.readouterr().err, f"could not write {target} (No space left on device)")
    assert target.read_text() == "previous"
    left = sorted(os.listdir(tmp_path))
    assert f"out.csv.tmp{int(dead.stdout)}" not in left and f"out.csv.tmp{os.getpid()}" not in left
    live = tmp_path / f"out.csv.tmp{os.getppid()}"  # our parent is alive
    live.write_text("a live run's")
    files.write_text(str(target), "new")
    assert target.read_text() == "new" and live.exists()


def test_outputs_are_checked_before_the_work(tmp_path, readonly_folder, capsys):
    (tmp_path / "file").write_text("")
    for path, folder, expected in [
        (os.path.join(readonly_folder, "m.pth"), False, "cannot write in"),
        (str(tmp_path), False, "is a folder; pass a file name"),
        (str(tmp_path / "file"), True, "is a file; pass a folder"),
        (os.path.join(readonly_folder, "out"), True, "cannot write in"),
    ]:
        with pytest.raises(SystemExit):
            cli.check_writable(path, "--output", folder=folder)
        assert_one_error(1, capsys.readouterr().err, expected)
    cli.check_writable(str(tmp_path / "new" / "folder"), "--output-dir", folder=True)  # its parent takes it
    assert sorted(os.listdir(tmp_path)) == ["file", "readonly"]  # a check writes nothing


# ---------------------------------------------------------------------------- photos and preprocessing
def test_load_image_handles_exif_16bit_rgba_cmyk(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees
    Image.new("RGB", (40, 20), (200, 10, 10)).save(tmp_path / "rot.jpg", exif=exif)
    assert photos.load_image(tmp_path / "rot.jpg").size == (20, 40)
    Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16)).save(tmp_path / "deep.png")
    assert photos.load_image(tmp_path / "deep.png").getpixel((0, 0)) == (255, 255, 255)
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    assert photos.load_image(tmp_path / "clear.png").getpixel((0, 0)) == (255, 255, 255)
    Image.new("CMYK", (8, 8), (0, 0, 0, 0)).save(tmp_path / "cmyk.jpg")
    assert photos.load_image(tmp_path / "cmyk.jpg").mode == "RGB"
    (tmp_path / "text.jpg").write_text("not a JPEG")
    img, why = photos.try_load_image(tmp_path / "text.jpg")
    assert img is None and why.startswith("not a readable image (UnidentifiedImageError")


def test_preprocess_is_timms_evaluation_transform(net):
    """One preprocessing for PyTorch and onnxruntime, equal to timm's own transform for the model."""
    cfg = model.data_config(net, 128)
    assert cfg["input_size"] == (3, 128, 128) and cfg["interpolation"] == "bicubic" and cfg["crop_pct"] == 0.875
    timm_transform = timm.data.create_transform(**cfg, is_training=False)
    rng = np.random.default_rng(0)
    for shape in [(300, 200, 3), (147, 201, 3), (146, 146, 3), (1000, 90, 3)]:
        img = Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8))
        x = photos.preprocess(img, cfg)
        assert x.shape == (3, 128, 128) and x.dtype == np.float32
        np.testing.assert_allclose(x, timm_transform(img).numpy(), atol=1e-5)
        crop = torch.from_numpy(np.asarray(photos.eval_crop(img, cfg)).transpose(2, 0, 1).copy())
        assert torch.equal(photos.normalise_batch(crop[None], cfg)[0], torch.from_numpy(x))  # the training loop's way
