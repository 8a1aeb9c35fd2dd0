"""
Export the trained model to one self-contained ONNX file for onnxruntime (predict.py, the web page in web/),
and check that it gives the same results as PyTorch on real photos before writing it.

    python export_onnx.py                                   # skin_model.pth -> skin_model.onnx
    python export_onnx.py --model best.pth --output best.onnx
    python export_onnx.py --check-images my_photos/         # check on other photos
    python predict.py photo.jpg --model skin_model.onnx     # then predict without torch

The file takes "image": float32 [batch, 3, size, size], any batch size, prepared as skinlesion/photos.py
preprocess does (the README's "Preprocessing" section spells it out for consumers outside Python). It gives
"logits" [batch, classes]; "p_malignant" [batch], the calibrated P(malignant): the summed probability of the
malignant classes, through the calibration stored in the model; and "cam" [batch, size/32, size/32], the
evidence map, the Grad-CAM of the malignant log-odds (> 0 where the evidence is for malignant, < 0 for benign;
predict.py --explain and the web page draw it); and, for a model with a familiarity measure,
"familiarity_distance" [batch], the Mahalanobis distance of the photo's features to the training photos'
(skinlesion/familiarity.py): above the metadata's familiarity limit, the photo is unfamiliar, with no answer.
Its metadata_props hold, each as JSON, what a consumer needs (classes and their sides, the preprocessing, the
threshold and operating point, the calibration, the familiarity limit, the validation results, the model card's
summary) and where it came from (source_checkpoint, source_sha256).
Exporter: torch.onnx's default, torch.export-based one (dynamo=True), with the weights inside the file.

The check: onnxruntime against PyTorch on real photos (read as predict.py reads them), for the whole batch at
once and for the first photo alone; a difference in P(malignant) or in the map over TOLERANCE (the map relative
to its largest value) is an error and nothing is written. The photos come from CHECK_IMAGES (dataset/val when
the default is missing; random tensors, said so, when there is no dataset at all); a CHECK_IMAGES you name
that holds no readable photo is an error. A temporary file left by a killed export is removed by the next one.
"""

import json
import os

import numpy as np

import model
from skinlesion import card, cli, familiarity, files, interrupts, model_index, photos

# -----------------------------------------------------------------------------
MODEL = "skin_model.pth"  # checkpoint written by AItraining.py
OUTPUT = "skin_model.onnx"  # the ONNX file to write (replaced atomically, only after the check passes)
CHECK_IMAGES = "dataset/test"  # folder (or photo) of real photos for the check; dataset/val if missing
N_CHECK = 16  # how many photos to check on (spread over the sorted list), >= 1
OPSET = 18  # ONNX opset version, 18 to 23
TOLERANCE = 1e-4  # largest difference in P(malignant) (and the map, relative) between PyTorch and onnxruntime
OVERWRITE = False  # replace an OUTPUT that this project did not write (never done without it)
# -----------------------------------------------------------------------------
LEFT_OUT = ("settings", "data")  # metadata the model card carries instead of the ONNX file


def parse_args(argv=None):
    args = cli.parse_flags(globals(), argv)
    cli.check(args.n_check >= 1, "--n-check", args.n_check, "check on at least 1 photo")
    cli.check(18 <= args.opset <= 23, "--opset", args.opset, "use an opset from 18 to 23")
    cli.check(cli.in_range(args.tolerance, 1e-9, 0.1), "--tolerance", args.tolerance, "use a number from 1e-9 to 0.1")
    named = "check_images" in args.given
    wanted = "not found; pass a folder (or a photo) of real photos"
    cli.check(os.path.exists(args.check_images) or not named, "--check-images", args.check_images, wanted)
    files.check_output(args.output, "--output", [args.model, args.check_images], args.overwrite)
    cli.check_writable(args.output, "--output")
    return args


def check_photos(source, n, cfg, named):
    """(a numpy batch of up to n photos from source, spread over the sorted list, preprocessed, a description).
    The default folder falls back to dataset/val, then to random tensors; a folder the user named must hold
    readable photos."""
    if not os.path.exists(source) and not named:
        source = "dataset/val"
    paths = photos.find_images([source])[0] if os.path.exists(source) else []
    paths = paths[:: max(1, len(paths) // n)][:n]
    images = [img for img, _ in map(photos.try_load_image, paths) if img is not None]
    if len(images) < len(paths):
        cli.warn(f"{len(paths) - len(images)} of the {len(paths)} check photos could not be read and were left out")
    if images:
        return np.stack([photos.preprocess(img, cfg) for img in images]), f"{len(images)} photos from {source}"
    if named:
        cli.die(f"--check-images {source} holds no readable photo; pass a folder (or a photo) of real photos")
    size = cfg["input_size"][-1]
    noise = np.random.default_rng(0).standard_normal((n, 3, size, size)).astype(np.float32)
    return noise, f"{n} random tensors (no photos found; --check-images FOLDER checks on real ones)"


def exportable(net, meta):
    """net as a module giving (logits, calibrated P(malignant), cam) and, for a model with a familiarity measure,
    the familiarity distance (skinlesion/familiarity.py): the cam weights each channel of the final feature map
    by the gradient of the malignant log-odds, log sum exp(malignant logits) - log sum exp(benign logits), for
    EfficientNet's head (global average pool + linear): for two classes, W[malignant] - W[benign]."""
    import torch

    mask = torch.as_tensor(model.malignant_mask(meta))
    fitted = meta.get("calibration") or {"a": 1.0, "b": 0.0}
    arrays = meta.get("familiarity") or {}

    class Exported(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net
            self.register_buffer("malignant", torch.nonzero(mask).flatten())
            self.register_buffer("benign", torch.nonzero(~mask).flatten())
            self.familiar = bool(arrays)
            if self.familiar:
                self.register_buffer("means", torch.as_tensor(arrays["means"], dtype=torch.float32))
                self.register_buffer("whitening", torch.as_tensor(arrays["whitening"], dtype=torch.float32))

        def forward(self, x):
            if self.familiar:  # one pass gives the familiarity features and the final map
                familiar_features, features = familiarity.features(self.net, x)
            else:
                features = self.net.forward_features(x)
            logits = self.net.forward_head(features)
            malignant, benign = logits.index_select(1, self.malignant), logits.index_select(1, self.benign)
            p = torch.sigmoid(fitted["a"] * (torch.logsumexp(malignant, 1) - torch.logsumexp(benign, 1)) + fitted["b"])
            w = self.net.get_classifier().weight
            direction = torch.softmax(malignant, 1) @ w[self.malignant] - torch.softmax(benign, 1) @ w[self.benign]
            cam = torch.einsum("bc,bchw->bhw", direction, features)
            if not self.familiar:
                return logits, p, cam
            return logits, p, cam, familiarity.torch_distances(familiar_features, self.means, self.whitening)

    return Exported().eval()


def onnx_metadata(meta, checkpoint):
    """What a consumer needs to use the ONNX file alone, each value as a JSON string."""
    import torch

    card_file = os.path.splitext(checkpoint)[0] + ".md"
    tested = model_index.test_results(card_file) if files.is_ours(card_file) else None
    props = {key: value for key, value in meta.items() if key not in LEFT_OUT}
    if meta.get("familiarity"):  # its arrays are in the graph
        props["familiarity"] = {k: v for k, v in meta["familiarity"].items() if k not in ("means", "whitening")}
    props.update(
        source_checkpoint=os.path.basename(checkpoint),
        source_sha256=files.file_sha256(checkpoint),
        outputs=output_names(meta),
        exporter=f"torch.onnx dynamo, torch {torch.__version__}",
        card_summary=card.summary(meta, tested),
    )
    return {key: json.dumps(value) for key, value in props.items()}


def output_names(meta):
    """The file's outputs: familiarity_distance only for a model with a familiarity measure."""
    return ["logits", "p_malignant", "cam"] + (["familiarity_distance"] if meta.get("familiarity") else [])


def export(wrapped, size, path, opset, metadata):
    """Write wrapped (exportable's) to path as one ONNX file with a dynamic batch size and the given metadata_props."""
    import torch

    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.onnx.export(
        wrapped,
        (torch.randn(2, 3, size, size),),
        input_names=["image"],
        output_names=output_names({"familiarity": wrapped.familiar}),
        dynamic_shapes=({0: batch},),
        opset_version=opset,
        dynamo=True,
        verbose=False,
    )
    program.model.metadata_props.update(metadata)
    program.save(path, external_data=False)


def max_difference(wrapped, meta, path, x):
    """Largest difference PyTorch - onnxruntime, in P(malignant) (the model's own prediction path against the
    file's p_malignant), in the map and the familiarity distance (both relative to their largest value), over
    the batch run at once and the first photo alone (which checks the dynamic batch size)."""
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    with torch.inference_mode():
        logits, _, *rest = (t.double().numpy() for t in wrapped(torch.from_numpy(x)))
    p = model.predictions([logits], meta)[0]
    diffs = []
    for part in (x, x[:1]):
        _, onnx_p, *onnx_rest = session.run(output_names(meta), {"image": part})
        diffs.append(np.abs(p[: len(part)] - onnx_p).max())
        for ours, theirs in zip(rest, onnx_rest):  # the map, the distance
            diffs.append(np.abs(ours[: len(part)] - theirs).max() / max(np.abs(ours).max(), 1e-12))
    return max(diffs)


def main(argv=None):
    args = parse_args(argv)
    import onnx
    import torch

    net, meta = model.load_checkpoint(args.model)  # dies with one line if missing, broken or not a checkpoint
    wrapped = exportable(net.float().to(memory_format=torch.contiguous_format).eval(), meta)
    x, described = check_photos(
        args.check_images, args.n_check, model.meta_data_config(meta), "check_images" in args.given
    )

    def export_and_check(tmp):  # inside files.atomic_write: a failed check leaves nothing behind
        export(wrapped, meta["image_size"], tmp, args.opset, onnx_metadata(meta, args.model))
        onnx.checker.check_model(tmp, full_check=True)
        diff = max_difference(wrapped, meta, tmp, x)
        compared = "P(malignant) and the evidence map"
        if meta.get("familiarity"):
            compared = "P(malignant), the evidence map and the familiarity distance"
        if not diff <= args.tolerance:
            cli.die(
                f"onnxruntime and PyTorch disagree: max difference {diff:.2e} > tolerance {args.tolerance:.0e} "
                f"on {described}; {args.output} not written"
            )
        print(
            f"onnxruntime matches PyTorch: max difference {diff:.2e} in {compared} "
            f"(tolerance {args.tolerance:.0e}) on {described}, batch of {len(x)} and batch of 1"
        )

    files.atomic_write(args.output, export_and_check)
    size, n = meta["image_size"], len(meta["classes"])
    also = ", 'familiarity_distance' [batch]" if meta.get("familiarity") else ""
    print(
        f"wrote {args.output} ({os.path.getsize(args.output) / 1e6:.1f} MB, onnx.checker passed, opset {args.opset}, "
        f"input 'image' [batch, 3, {size}, {size}], outputs 'logits' [batch, {n}], 'p_malignant' [batch]{also} and "
        f"'cam' [batch, {size // 32}, {size // 32}])"
    )
    print(f"use it with: python predict.py photo.jpg --model {args.output}")


if __name__ == "__main__":
    interrupts.run_script(main, "interrupted; nothing written")
