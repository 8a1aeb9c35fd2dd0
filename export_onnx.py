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
malignant classes in the one calibrated distribution softmax(a * logits + b * malignant) (model.py
calibrated_probabilities, with the calibration stored in the model); and "cam" [batch, side, side], side =
ceil(size/stride) (stride 32 for EfficientNet-B0, backbone.cam_side), the evidence map, the Grad-CAM of the
malignant log-odds (> 0 where the evidence is for malignant, < 0 for benign; predict.py --explain and the web page
draw it); and, for a model with a familiarity measure, "familiarity_distance" [batch], the Mahalanobis distance of
the photo's features to the training photos' (skinlesion/familiarity.py): above the metadata's familiarity limit,
the photo is unfamiliar, with no answer. Its metadata_props hold, each as JSON, what a consumer needs (classes and
their sides, the preprocessing, the threshold and operating point, the calibration, the validation results, the
model card's summary, the familiarity limit) and where it came from (source_checkpoint, source_sha256). Exporter:
torch.onnx's default, torch.export-based one (dynamo=True), with the weights inside the file.

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
from skinlesion import backbone, card, cli, familiarity, files, interrupts, model_index, photos, quantise

# -----------------------------------------------------------------------------
MODEL = "skin_model.pth"  # checkpoint written by AItraining.py
OUTPUT = "skin_model.onnx"  # the ONNX file to write (replaced atomically, only after the check passes)
CHECK_IMAGES = "dataset/test"  # folder (or photo) of real photos for the check; dataset/val if missing
N_CHECK = 16  # how many photos to check on (spread over the sorted list), >= 1
OPSET = 18  # ONNX opset version, 18 to 23
TOLERANCE = 1e-4  # largest difference of PyTorch and onnxruntime in P(malignant) (the map: relative), 1e-9 to 0.1
QUANTISE = True  # also write OUTPUT's int8 twin (.int8.onnx, ~3x smaller, for the page), compared on QUANTISE_IMAGES
QUANTISE_IMAGES = "dataset/val"  # labelled photos (<class>/ sub-folders) that calibrate and judge the int8 twin
OVERWRITE = False  # replace an OUTPUT that this project did not write (never done without it)
# -----------------------------------------------------------------------------


def parse_args(argv=None):
    args = cli.parse_flags(globals(), argv)
    named = "check_images" in args.given
    wanted = "not found; pass a folder (or a photo) of real photos"
    cli.check(os.path.exists(args.check_images) or not named, "--check-images", args.check_images, wanted)
    files.check_output(args.output, "--output", "ONNX model", [args.model, args.check_images], args.overwrite)
    cli.check_writable(args.output, "--output")
    named = "quantise_images" in args.given
    wanted = "not found; pass a folder of labelled validation photos"
    cli.check(os.path.isdir(args.quantise_images) or not named, "--quantise-images", args.quantise_images, wanted)
    if args.quantise:
        twin = quantise.quantised_path(args.output)
        inputs = [args.model, args.check_images, args.output]
        files.check_output(twin, "--output's int8 twin", "ONNX model", inputs, args.overwrite)
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
    """net as a module giving (logits, calibrated P(malignant): the malignant classes' summed probability in
    softmax(a * logits + b * malignant), cam) and, for a model with a familiarity measure, the familiarity
    distance (skinlesion/familiarity.py): the cam weights each channel of the final feature map by the gradient of
    the malignant log-odds, log sum exp(malignant logits) - log sum exp(benign logits), for a head that is a
    global average pool and one linear layer (backbone.pooled_linear_head): for two classes, W[malignant] -
    W[benign]."""
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
            self.register_buffer("shift", fitted["b"] * mask.to(torch.float32))
            self.familiar = bool(arrays)
            self.measure = []
            if self.familiar:  # floor 0: a full whitening (a file before the floor)
                graph, self.floor = familiarity.graph_arrays(arrays)
                for name, tensor in graph.items():
                    self.register_buffer(name, tensor)
                self.measure = list(graph)

        def forward(self, x):
            if self.familiar:  # one pass gives the familiarity features and the final map
                familiar_features, features = familiarity.features(self.net, x)
            else:
                features = self.net.forward_features(x)
            logits = self.net.forward_head(features)
            malignant, benign = logits.index_select(1, self.malignant), logits.index_select(1, self.benign)
            calibrated = torch.softmax(fitted["a"] * logits + self.shift, 1)
            p = calibrated.index_select(1, self.malignant).sum(1)
            w = self.net.get_classifier().weight
            direction = torch.softmax(malignant, 1) @ w[self.malignant] - torch.softmax(benign, 1) @ w[self.benign]
            cam = torch.einsum("bc,bchw->bhw", direction, features)
            if not self.familiar:
                return logits, p, cam
            return (
                logits,
                p,
                cam,
                familiarity.torch_distances(
                    familiar_features, floor=self.floor, **{name: getattr(self, name) for name in self.measure}
                ),
            )

    return Exported().eval()


def evaluation_of(checkpoint):
    """evaluate.py's results (evaluation.json beside the checkpoint) when they are of this very file (its
    SHA-256 recorded there), else None."""
    path = os.path.join(os.path.dirname(checkpoint), "evaluation.json")
    if files.file_kind(path):  # missing, a folder, a named pipe
        return None
    try:
        with open(path, encoding="utf-8") as f:
            evaluation = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(evaluation, dict) or evaluation.get("model_sha256") != files.file_sha256(checkpoint):
        return None
    return evaluation


def self_check(wrapped, size):
    """The outputs the file must give on model.check_inputs (load_onnx compares): PyTorch's, which onnxruntime
    matches within TOLERANCE (checked on real photos before the file is written)."""
    import torch

    x = model.check_inputs(size)
    with torch.inference_mode():
        logits, p = wrapped(torch.from_numpy(x))[:2]  # (and the map, and a familiarity distance where there is one)
    return dict(inputs=len(x), logits=logits.double().tolist(), p_malignant=p.double().tolist())


def onnx_metadata(meta, checkpoint, checked):
    """What a consumer needs to use the ONNX file alone (model.KEYS marked "copied", and those export writes),
    each value as a JSON string."""
    import torch

    tested = model_index.test_results(evaluation_of(checkpoint))
    props = {key: value for key, value in meta.items() if key in model.KEYS and model.KEYS[key].onnx == "copied"}
    if meta.get("familiarity"):  # its arrays are in the graph
        props["familiarity"] = {k: v for k, v in meta["familiarity"].items() if k not in familiarity.ARRAYS}
    props.update(
        source_checkpoint=cli.printable(os.path.basename(checkpoint)),
        source_sha256=files.file_sha256(checkpoint),
        outputs=output_names(meta),
        exporter=f"torch.onnx dynamo, torch {torch.__version__}",
        card_summary=card.summary(meta, tested),
        self_check=checked,
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


def labelled_photos(folder, meta):
    """(preprocessed photos, 1 malignant / 0 benign by their class folder, or None where a photo has none)."""
    paths = photos.find_images([folder])[0] if os.path.isdir(folder) else []
    malignant = dict(zip(meta["classes"], model.malignant_mask(meta).tolist()))
    cfg, images, y = model.meta_data_config(meta), [], []
    for path in paths:
        img, _ = photos.try_load_image(path)
        if img is not None:
            images.append(photos.preprocess(img, cfg))
            y.append(malignant.get(os.path.basename(os.path.dirname(path))))
    labelled = y and None not in y
    return np.stack(images) if images else None, np.array(y, dtype=int) if labelled else None


def write_int8_twin(args, meta):
    """The int8 twin of args.output (skinlesion/quantise.py), calibrated on QUANTISE_IMAGES and compared there
    with the full model: written with the comparison in its metadata, which decides whether the page uses it."""
    import onnx
    import onnxruntime as ort

    twin = quantise.quantised_path(args.output)
    x, y = labelled_photos(args.quantise_images, meta)
    if x is None and "quantise_images" in args.given:
        cli.die(f"--quantise-images {args.quantise_images} holds no readable photo; pass a folder of validation photos")
    if x is None:
        print(f"no int8 twin written: no photos in {args.quantise_images} to calibrate it on (--quantise-images)")
        return
    full = ort.InferenceSession(args.output, providers=["CPUExecutionProvider"])
    speeds = {}

    def quantise_and_compare(tmp):
        quantise.quantise(args.output, tmp, x)
        small = ort.InferenceSession(tmp, providers=["CPUExecutionProvider"])
        names = ["p_malignant"] + (["familiarity_distance"] if meta.get("familiarity") else [])
        (p_full, *d_full), (p_int8, *d_int8) = quantise.outputs(full, x, names), quantise.outputs(small, x, names)
        limit = (meta.get("familiarity") or {}).get("limit")
        distances = (d_full[0], d_int8[0]) if d_full else None
        result = quantise.comparison(p_full, p_int8, y, meta["threshold"], model.BORDERLINE, distances, limit)
        result.update(from_sha256=files.file_sha256(args.output), photos_from=os.path.basename(args.quantise_images))
        speeds.update(full=quantise.seconds_per_photo(full, x), int8=quantise.seconds_per_photo(small, x))
        checks = model.check_inputs(meta["image_size"])
        logits, p = small.run(["logits", "p_malignant"], {"image": checks})
        own = dict(inputs=len(checks), logits=logits.astype(float).tolist(), p_malignant=p.astype(float).tolist())
        proto = onnx.load(tmp)
        del proto.metadata_props[:]  # the full model's (the quantiser adds keys of its own), its own self_check
        for prop in onnx.load(args.output, load_external_data=False).metadata_props:
            value = json.dumps(own) if prop.key == "self_check" else prop.value
            proto.metadata_props.add(key=prop.key, value=value)
        proto.metadata_props.add(key="quantised", value=json.dumps(result))
        onnx.save(proto, tmp)
        speeds["result"] = result

    files.atomic_write(twin, quantise_and_compare, "ONNX model")
    ratio = os.path.getsize(args.output) / os.path.getsize(twin)
    print(
        f"wrote {twin} ({os.path.getsize(twin) / 1e6:.1f} MB, {ratio:.1f}x smaller; {speeds['int8'] * 1e3:.0f} ms a "
        f"photo against {speeds['full'] * 1e3:.0f} ms here): {quantise.comparison_text(speeds['result'])}"
    )


def main(argv=None):
    args = parse_args(argv)
    import onnx
    import torch

    net, meta = model.load_checkpoint(args.model)  # dies with one line if missing, broken or not a checkpoint
    meta["network"] = backbone.network_shape(net)  # what the graph must show, from the network (not the file's word)
    wrapped = exportable(net.float().to(memory_format=torch.contiguous_format).eval(), meta)
    x, described = check_photos(
        args.check_images, args.n_check, model.meta_data_config(meta), "check_images" in args.given
    )

    def export_and_check(tmp):  # inside files.atomic_write: a failed check leaves nothing behind
        checked = self_check(wrapped, meta["image_size"])
        export(wrapped, meta["image_size"], tmp, args.opset, onnx_metadata(meta, args.model, checked))
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

    files.atomic_write(args.output, export_and_check, "ONNX model")
    size, n, side = (
        meta["image_size"],
        len(meta["classes"]),
        backbone.cam_side(meta["image_size"], meta["network"]["stride"]),
    )
    also = ", 'familiarity_distance' [batch]" if meta.get("familiarity") else ""
    print(
        f"wrote {args.output} ({os.path.getsize(args.output) / 1e6:.1f} MB, onnx.checker passed, opset {args.opset}, "
        f"input 'image' [batch, 3, {size}, {size}], outputs 'logits' [batch, {n}], 'p_malignant' [batch]{also} and "
        f"'cam' [batch, {side}, {side}])"
    )
    if args.quantise:
        write_int8_twin(args, meta)
    print(f"use it with: python predict.py photo.jpg --model {args.output}")


if __name__ == "__main__":
    interrupts.run_script(main, "interrupted; nothing written")
