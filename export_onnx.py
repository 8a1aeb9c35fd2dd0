"""
Export the trained model to one self-contained ONNX file for onnxruntime, and check that it gives the
same probabilities as PyTorch on real photos before writing it.

    python export_onnx.py                                   # skin_model.pth -> skin_model.onnx
    python export_onnx.py --model best.pth --output best.onnx
    python export_onnx.py --check-images my_photos/         # check on other photos
    python predict.py photo.jpg --model skin_model.onnx     # then predict without torch

The file takes "image": float32 [batch, 3, size, size], any batch size, normalised as model.preprocess
does, and gives "logits": [batch, 2] for model.CLASSES (softmax gives P(benign), P(malignant)). Its
metadata_props hold what predict.py needs, each value as JSON: classes, image_size, mean, std,
interpolation, crop_pct, threshold, and model_name, val_metrics, epoch, source_checkpoint, source_sha256.
Exporter: torch.onnx's default, torch.export-based one (dynamo=True), with the weights inside the file.
The check: P(malignant) from onnxruntime (photos through model.preprocess, as predict.py does) against
PyTorch (photos through model.eval_transform), for the whole batch at once and for the first photo alone;
a difference over TOLERANCE is an error and nothing is written. The photos come from CHECK_IMAGES, or
dataset/val if it is missing; with no photos at all the check runs on random tensors and says so.
"""
import argparse
import hashlib
import json
import os
import sys

import numpy as np
import onnx
import torch

import model

# -----------------------------------------------------------------------------
MODEL = "skin_model.pth"  # checkpoint written by AItraining.py
OUTPUT = "skin_model.onnx"  # the ONNX file to write (replaced atomically, only after the check passes)
CHECK_IMAGES = "dataset/test"  # folder (or photo) of real photos for the check; dataset/val if missing
N_CHECK = 16  # how many photos to check on (spread over the sorted list)
OPSET = 18  # ONNX opset version
TOLERANCE = 1e-4  # largest allowed difference in P(malignant) between PyTorch and onnxruntime
# -----------------------------------------------------------------------------


def check_images(path, n):
    """Up to n photos from path (a photo or a folder, recursively), spread over the sorted list; None if
    path does not exist, [] if it holds no photo."""
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        return None
    found = sorted(os.path.join(root, name) for root, _, names in os.walk(path) for name in names
                   if model.is_image_file(name))
    return found[::max(1, len(found) // n)][:n]


def check_inputs(paths, cfg, n, source):
    """(torch batch from eval_transform, numpy batch from model.preprocess, description) for the check."""
    transform = model.eval_transform(cfg)
    tensors, arrays, unreadable = [], [], 0
    for path in paths:
        try:
            img = model.load_image(path)
        except Exception:
            unreadable += 1
            continue
        tensors.append(transform(img))
        arrays.append(model.preprocess(img, cfg))
    if unreadable:
        model.warn(f"{unreadable} of the {len(paths)} check photos could not be read and were left out")
    if tensors:
        return torch.stack(tensors), np.stack(arrays), f"{len(tensors)} photos from {source}"
    size = cfg["input_size"][-1]
    x = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))
    return x, x.numpy().copy(), f"{n} random tensors (no photos found; --check-images FOLDER checks on real ones)"


def file_sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def onnx_metadata(meta, checkpoint):
    """What predict.py needs to use the ONNX file alone, each value as a JSON string."""
    keys = ("model_name", "classes", "image_size", "mean", "std", "interpolation", "crop_pct", "threshold",
            "val_metrics", "epoch")
    props = {key: meta.get(key) for key in keys}
    props.update(source_checkpoint=os.path.basename(checkpoint), source_sha256=file_sha256(checkpoint),
                 output="logits", exporter=f"torch.onnx dynamo, torch {torch.__version__}")
    return {key: json.dumps(value) for key, value in props.items()}


def export(net, size, path, opset, metadata):
    """Write net to path as one ONNX file with a dynamic batch size and the given metadata_props."""
    example = torch.randn(2, 3, size, size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.onnx.export(net, (example,), input_names=["image"], output_names=["logits"],
                                dynamic_shapes=({0: batch},), opset_version=opset, dynamo=True, verbose=False)
    program.model.metadata_props.update(metadata)
    program.save(path, external_data=False)


def softmax_malignant(logits):
    logits = np.asarray(logits, dtype=np.float64)
    p = np.exp(logits - logits.max(1, keepdims=True))
    return (p / p.sum(1, keepdims=True))[:, model.CLASSES.index("malignant")]


def max_difference(net, path, x_torch, x_numpy):
    """Largest |P(malignant) PyTorch - onnxruntime| over the batch run at once and the first photo alone
    (which also checks the dynamic batch size)."""
    import onnxruntime as ort
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    with torch.inference_mode():
        p_torch = model.malignant_probability(net, x_torch).double().numpy()
    p_batch = softmax_malignant(session.run(["logits"], {"image": x_numpy})[0])
    p_one = softmax_malignant(session.run(["logits"], {"image": x_numpy[:1]})[0])
    return max(np.abs(p_torch - p_batch).max(), abs(p_torch[0] - p_one[0]))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=MODEL, help="checkpoint written by AItraining.py")
    parser.add_argument("--output", default=OUTPUT, help="ONNX file to write")
    parser.add_argument("--check-images", default=CHECK_IMAGES, help="folder or photo for the check")
    parser.add_argument("--n-check", type=int, default=N_CHECK, help="how many photos to check on")
    parser.add_argument("--opset", type=int, default=OPSET, help="ONNX opset version")
    parser.add_argument("--tolerance", type=float, default=TOLERANCE, help="largest allowed difference")
    args = parser.parse_args()
    if args.n_check < 1:
        model.die(f"--n-check {args.n_check}: check on at least 1 photo")
    folder = os.path.dirname(args.output) or "."
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        model.die(f"cannot write {args.output}: {folder} is not a writable folder; pass another --output")

    net, meta = model.load_checkpoint(args.model)  # dies with one line if missing or not a checkpoint
    net = net.float().to(memory_format=torch.contiguous_format).eval()
    cfg = model.meta_data_config(meta)
    source = args.check_images
    paths = check_images(source, args.n_check)
    if paths is None and source == CHECK_IMAGES:
        source = "dataset/val"
        paths = check_images(source, args.n_check)
    elif paths is None:
        model.die(f"--check-images {source} not found; pass a folder of photos")
    x_torch, x_numpy, described = check_inputs(paths or [], cfg, args.n_check, source)

    tmp = f"{args.output}.tmp{os.getpid()}"
    try:
        export(net, meta["image_size"], tmp, args.opset, onnx_metadata(meta, args.model))
        onnx.checker.check_model(tmp, full_check=True)
        diff = max_difference(net, tmp, x_torch, x_numpy)
        if not diff <= args.tolerance:
            model.die(f"onnxruntime and PyTorch disagree: max difference in P(malignant) {diff:.2e} > tolerance "
                      f"{args.tolerance:.0e} on {described}; {args.output} not written")
        os.replace(tmp, args.output)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    print(f"onnxruntime matches PyTorch: max difference in P(malignant) {diff:.2e} (tolerance "
          f"{args.tolerance:.0e}) on {described}, batch of {len(x_numpy)} and batch of 1")
    size = meta["image_size"]
    print(f"wrote {args.output} ({os.path.getsize(args.output) / 1e6:.1f} MB, onnx.checker passed, opset {args.opset}, "
          f"input 'image' [batch, 3, {size}, {size}], output 'logits' [batch, {len(model.CLASSES)}])")
    print(f"use it with: python predict.py photo.jpg --model {args.output}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        print("\ninterrupted; nothing written", file=sys.stderr)
        sys.exit(130)
