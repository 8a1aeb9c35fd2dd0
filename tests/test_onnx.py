"""export_onnx.py and predict.py's onnxruntime path on a random-init 64 px EfficientNet-B0: one checked
file with metadata and a dynamic batch, the same probabilities as PyTorch, no torch import, bad files."""
import hashlib
import json
import os
import re
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper
from PIL import Image

import model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 64


def make_net():
    """Random-init EfficientNet-B0 whose P(malignant) depends on the photo (at random init the BatchNorm
    statistics make every photo 0.5, and then any two exporters agree): statistics from one batch and a
    scaled-up head."""
    torch.manual_seed(0)
    net = model.build_model(pretrained=False)
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    net.train()
    with torch.no_grad():
        net(torch.rand(8, 3, SIZE, SIZE) * 4 - 2)
        net.classifier.weight.mul_(0.2)
    return net.eval()


def save_photo(path, size, seed):
    rng = np.random.default_rng(seed)
    w, h = size
    img = np.array([200, 150, 130]) + rng.normal(0, 20, (h, w, 3))
    yy, xx = np.mgrid[:h, :w]
    img[(yy - rng.uniform(0.3, 0.7) * h) ** 2 + (xx - rng.uniform(0.3, 0.7) * w) ** 2 < (min(w, h) / 4) ** 2] *= 0.35
    Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(path)
    return str(path)


def run(script, args, cwd):
    # one thread: on a busy 2-core machine two spinning OpenMP threads make a 64 px forward ~100x slower
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONIOENCODING="utf-8", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *args], cwd=cwd, capture_output=True,
                          text=True, encoding="utf-8", env=env, timeout=300)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A checkpoint, three photos, and the ONNX file export_onnx.py made of them (into a folder of its own)."""
    folder = tmp_path_factory.mktemp("onnx")
    net = make_net()
    model.save_checkpoint(str(folder / "skin_model.pth"),
                          model.checkpoint_state(net, model.data_config(net, SIZE), threshold=0.37,
                                                 metrics={"roc_auc": 0.5}, epoch=3))
    (folder / "photos").mkdir()
    sizes = [(90, 70), (64, 100), (80, 80)]
    photos = [save_photo(folder / "photos" / f"p{i}.jpg", size, i) for i, size in enumerate(sizes)]
    (folder / "out").mkdir()
    result = run("export_onnx.py", ["--model", "skin_model.pth", "--output", "out/skin model.onnx",
                                    "--check-images", "photos"], folder)
    assert result.returncode == 0, result.stderr
    return dict(folder=folder, checkpoint=str(folder / "skin_model.pth"), onnx=str(folder / "out" / "skin model.onnx"),
                photos=photos, stdout=result.stdout)


def test_export_writes_one_checked_file_with_metadata(exported):
    assert os.listdir(os.path.dirname(exported["onnx"])) == ["skin model.onnx"]  # no .data, no temporary file
    match = re.search(r"max difference in P\(malignant\) (\S+) \(tolerance 1e-04\) on 3 photos from photos",
                      exported["stdout"])
    assert match and float(match.group(1)) <= 1e-4, exported["stdout"]
    onnx.checker.check_model(exported["onnx"], full_check=True)
    proto = onnx.load(exported["onnx"])
    assert [i.name for i in proto.graph.input] == ["image"] and [o.name for o in proto.graph.output] == ["logits"]
    props = {p.key: json.loads(p.value) for p in proto.metadata_props}
    meta = model.read_checkpoint(exported["checkpoint"])["meta"]
    for key in ("model_name", "classes", "image_size", "mean", "std", "interpolation", "crop_pct", "threshold",
                "val_metrics", "epoch"):
        assert props[key] == meta[key], key
    with open(exported["checkpoint"], "rb") as f:
        assert props["source_sha256"] == hashlib.sha256(f.read()).hexdigest()


def test_dynamic_batch_and_parity_with_torch(exported):
    net, meta = model.load_checkpoint(exported["checkpoint"])
    cfg = model.meta_data_config(meta)
    images = [model.load_image(p) for p in exported["photos"]]
    session = ort.InferenceSession(exported["onnx"], providers=["CPUExecutionProvider"])
    batch = np.stack([model.preprocess(img, cfg) for img in images])
    logits = session.run(["logits"], {"image": batch})[0]
    singles = np.concatenate([session.run(["logits"], {"image": batch[i:i + 1]})[0] for i in range(len(batch))])
    assert logits.shape == (3, 2)
    np.testing.assert_allclose(logits, singles, atol=1e-5)
    p_onnx = torch.softmax(torch.from_numpy(logits), 1)[:, 1].numpy()
    with torch.no_grad():
        x = torch.stack([model.eval_transform(cfg)(img) for img in images])
        p_torch = model.malignant_probability(net, x).numpy()
    assert np.abs(p_onnx - p_torch).max() <= 1e-4
    assert p_torch.max() - p_torch.min() > 0.01, "all photos get the same probability: the parity check would be empty"


@pytest.mark.parametrize("size", [(90, 70), (61, 100), (64, 64), (301, 203), (40, 30)])
def test_preprocess_matches_eval_transform(tmp_path, exported, size):
    cfg = model.meta_data_config(model.read_checkpoint(exported["checkpoint"])["meta"])
    img = model.load_image(save_photo(tmp_path / "p.png", size, 7))
    expected = model.eval_transform(cfg)(img).numpy()
    got = model.preprocess(img, cfg)
    assert got.shape == expected.shape == (3, SIZE, SIZE)
    assert np.abs(got - expected).max() <= 1e-4


def test_predict_onnx_matches_torch_and_never_imports_torch(exported):
    folder, photo = exported["folder"], exported["photos"][0]
    with_torch = run("predict.py", [photo, "--model", exported["checkpoint"], "--csv", "torch.csv"], folder)
    assert with_torch.returncode == 0, with_torch.stderr
    wrapper = (f"import sys; sys.path.insert(0, {ROOT!r}); import predict; "
               f"sys.argv = ['predict.py', {photo!r}, '--model', {exported['onnx']!r}, '--csv', 'onnx.csv']; "
               "predict.main(); "
               "assert not {'torch', 'timm', 'torchvision'} & set(sys.modules), 'the ONNX path imported torch'")
    without = subprocess.run([sys.executable, "-c", wrapper], cwd=folder, capture_output=True, text=True, timeout=120)
    assert without.returncode == 0, without.stderr
    assert with_torch.stdout.splitlines()[:2] == without.stdout.splitlines()[:2]
    assert without.stdout.splitlines()[1].endswith("(threshold 0.370)")  # threshold from the metadata
    p_torch = float((folder / "torch.csv").read_text().splitlines()[1].split(",")[2])
    p_onnx = float((folder / "onnx.csv").read_text().splitlines()[1].split(",")[2])
    assert abs(p_torch - p_onnx) <= 1e-4


def save_onnx(path, input_shape, metadata=None):
    """A tiny ONNX model (mean over all but the batch axis, twice: [batch, 2]) with the given input shape,
    built with onnx.helper (exporting a torch model would take seconds and prove nothing more)."""
    nodes = [helper.make_node("ReduceMean", ["x"], ["y"], axes=list(range(1, len(input_shape))), keepdims=0),
             helper.make_node("Unsqueeze", ["y", "axes"], ["u"]),
             helper.make_node("Concat", ["u", "u"], ["logits"], axis=1)]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, input_shape)],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
                              initializer=[helper.make_tensor("axes", TensorProto.INT64, [1], [1])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    proto.ir_version = 8
    for key, value in (metadata or {}).items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(path))
    return str(path)


@pytest.mark.parametrize("case", ["2D input", "no metadata", "not ONNX", "explain"])
def test_onnx_mistakes_give_one_line(tmp_path, exported, case):
    photo = exported["photos"][0]
    model_file, extra, expected = {
        "2D input": (save_onnx(tmp_path / "flat.onnx", ["batch", 10]), [], "needs one float32 input of shape"),
        "no metadata": (save_onnx(tmp_path / "bare.onnx", ["batch", 3, SIZE, SIZE]), [], "no classes, image_size"),
        "not ONNX": (str(tmp_path / "junk.onnx"), [], "not a readable ONNX model"),
        "explain": (exported["onnx"], ["--explain"], "--explain needs gradients"),
    }[case]
    (tmp_path / "junk.onnx").write_text("not a model")
    result = run("predict.py", [photo, "--model", model_file, *extra], tmp_path)
    assert result.returncode == 1 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("error: ") and expected in result.stderr


def test_export_refuses_a_mismatch_and_writes_nothing(exported, tmp_path):
    """No dataset/ here, so the check falls back to random tensors; tolerance 0 cannot be met."""
    result = run("export_onnx.py", ["--model", exported["checkpoint"], "--output", "x.onnx", "--tolerance", "0",
                                    "--n-check", "4"], tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(error) == 1 and "max difference in P(malignant)" in error[0] and "random tensors" in error[0]
    assert os.listdir(tmp_path) == []
