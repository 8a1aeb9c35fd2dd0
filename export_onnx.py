"""
Export the trained model to one self-contained ONNX file for onnxruntime (predict.py, the web page in web/),
checked against PyTorch on real photos before it is written. In full: docs/reference.md.

    python export_onnx.py                                   # skin_model.pth -> skin_model.onnx
    python export_onnx.py --model best.pth --output best.onnx
    python export_onnx.py --check-images my_photos/         # check on other photos
    python predict.py photo.jpg --model skin_model.onnx     # then predict without torch
"""

from skinlesion import interrupts

if __name__ == "__main__":  # first, before the libraries load: a Ctrl-C while they do is one line, not a traceback
    interrupts.one_line_while_loading()

import os
import shlex
import sys

import numpy as np

import model
from skinlesion import (
    answer,
    backbone,
    card,
    familiarity,
    files,
    flags,
    messages,
    model_file,
    onnx_file,
    photos,
    quantise,
    reading,
)

# -----------------------------------------------------------------------------
MODEL = "skin_model.pth"  # checkpoint written by AItraining.py
OUTPUT = "skin_model.onnx"  # the ONNX file to write (replaced atomically, only after the check passes)
CHECK_IMAGES = "dataset/test"  # folder (or photo) of real photos for the check; dataset/val if missing
N_CHECK = 16  # how many photos to check on (spread over the sorted list), >= 1
OPSET = 18  # ONNX opset version, 18 to 23
TOLERANCE = 1e-4  # largest difference of PyTorch and onnxruntime in P(malignant) (the others: relative), 1e-9 to 0.1
QUANTISE = True  # also write OUTPUT's int8 twin (.int8.onnx: smaller weights, for the page), judged on QUANTISE_IMAGES
QUANTISE_IMAGES = "dataset/val"  # labelled photos (<class>/ sub-folders) on which the int8 twin is judged
OVERWRITE = False  # replace an OUTPUT that this project did not write (never done without it)
# -----------------------------------------------------------------------------
MAX_EVALUATION_BYTES = 1_000_000_000  # the largest evaluation.json read (it lists every unreadable, unfamiliar photo)


def parse_args(argv=None):
    args = flags.parse_flags(globals(), argv)
    named = "check_images" in args.given
    wanted = "not found; pass a folder (or a photo) of real photos"
    flags.check(os.path.exists(args.check_images) or not named, "--check-images", args.check_images, wanted)
    files.check_output(args.output, "--output", "ONNX model", [args.model, args.check_images], args.overwrite)
    flags.check_writable(args.output, "--output")
    named = "quantise_images" in args.given
    wanted = "not found; pass a folder of labelled validation photos"
    flags.check(os.path.isdir(args.quantise_images) or not named, "--quantise-images", args.quantise_images, wanted)
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
        messages.warn(
            f"{len(paths) - len(images)} of the {len(paths)} check photos could not be read and were left out"
        )
    if images:
        described = f"{len(images)} photos from {messages.printable(source)}"
        return np.stack([photos.preprocess(img, cfg) for img in images]), described
    if named:
        wanted = "pass a folder (or a photo) of real photos"
        raise messages.UserError(f"--check-images {messages.printable(source)} holds no readable photo; {wanted}")
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


def evaluation_of(checkpoint, sha256):
    """evaluate.py's test results (evaluation.json beside the checkpoint) when they are of this very file (its
    SHA-256, sha256, recorded there) and of its test split (not an external validation), else None."""
    path = os.path.join(os.path.dirname(checkpoint), "evaluation.json")
    if files.file_kind(path) == "missing":
        return None
    try:  # a regular file only (a named pipe would block, a link to /dev/zero never end), bounded, parsable
        evaluation = reading.read_json(path, MAX_EVALUATION_BYTES)
    except OSError as e:
        why = f"{messages.printable(path)} cannot be read ({e.strerror or e})"
        if isinstance(e, reading.Unreadable):  # its message names the file and says what it is
            why = str(e)
        print(f"note: {why}: the test results are taken from the model card where it holds them")
        return None
    if not isinstance(evaluation, dict) or evaluation.get("model_sha256") != sha256:
        return None
    return None if evaluation.get("external_validation") else evaluation


def card_path(checkpoint):
    """The model card beside the checkpoint (AItraining.py writes it there, evaluate.py adds its results)."""
    return os.path.splitext(checkpoint)[0] + ".md"


def record_in_card(checkpoint, sha256, meta, written):
    """List the ONNX files written ({path: SHA-256}) in the model's card, beside the checkpoint's own SHA-256: one
    identity per model, for the files that travel together (written into the checkpoint's folder, as serve_web.py
    publishes the card beside the ONNX file). Only in our own card of this very checkpoint; else say why not."""
    path = card_path(checkpoint)
    folder = os.path.dirname(os.path.abspath(checkpoint))
    written = {p: digest for p, digest in written.items() if os.path.dirname(os.path.abspath(p)) == folder}
    if not written or files.file_kind(path) == "missing":  # no card to list them in
        return
    kept = card.embedded(path, sha256) if files.file_kind(path) is None else None
    if kept is None:
        print(f"note: {messages.printable(path)} is not this model's card as AItraining.py wrote it: the exports' "
              "SHA-256 are not listed there")  # fmt: skip
        return
    exports = dict(kept.get("exports") or {}, **{os.path.basename(p): digest for p, digest in written.items()})
    card.write_card(path, meta, os.path.basename(checkpoint), kept.get("test"), kept.get("externals"), sha256, exports)
    names = ", ".join(messages.printable(os.path.basename(p)) for p in written)
    print(f"listed {names} with their SHA-256 in the model card {messages.printable(path)}")


def torch_self_check(wrapped, meta):
    """The outputs the file must give on onnx_file.check_inputs (load_onnx compares), every one of them: PyTorch's,
    which onnxruntime matches within TOLERANCE (checked on real photos before the file is written)."""
    import torch

    x = onnx_file.check_inputs(meta["image_size"])
    with torch.inference_mode():
        outputs = wrapped(torch.from_numpy(x))
    return onnx_file.self_check_record(dict(zip(onnx_file.output_names(meta), (t.double().numpy() for t in outputs))))


def onnx_metadata(meta, checkpoint, sha256, checked):
    """What a consumer needs to use the ONNX file alone (onnx_file.export_metadata: the model file's keys it copies,
    and those export writes), each value as a JSON string; sha256: the checkpoint's."""
    import torch

    test, externals = card.earlier_evaluations(card_path(checkpoint), sha256)
    tested = card.test_results(evaluation_of(checkpoint, sha256) or test)  # the card keeps it past --external
    return onnx_file.export_metadata(
        meta,
        source_checkpoint=messages.printable(os.path.basename(checkpoint)),
        source_sha256=sha256,
        outputs=onnx_file.output_names(meta),
        exporter=f"torch.onnx dynamo, torch {torch.__version__}",
        card_summary=card.summary(meta, tested, externals),
        self_check=checked,
    )


def export(wrapped, size, path, opset, metadata):
    """Write wrapped (exportable's) to path as one ONNX file with a dynamic batch size and the given metadata."""
    import torch

    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.onnx.export(
        wrapped,
        (torch.randn(2, 3, size, size),),
        input_names=["image"],
        output_names=onnx_file.output_names({"familiarity": wrapped.familiar}),
        dynamic_shapes=({0: batch},),
        opset_version=opset,
        dynamo=True,
        verbose=False,
    )
    onnx_file.save_export(program, path, metadata)


def differences(wrapped, meta, path, x):
    """The largest difference PyTorch - onnxruntime in each output, over x at once and its first photo alone (the
    batch size is dynamic; a lone photo is also run twice over): in P(malignant) (the model's own prediction path
    from PyTorch's logits against the file's p_malignant), in the logits relative to the largest (at least 1), in
    the map and the familiarity distance relative to their largest value. NaN where either gives a NaN."""
    import torch

    batches = (x, x[:1]) if len(x) > 1 else (np.concatenate([x, x]), x)
    session = onnx_file.cpu_session(path)
    names = onnx_file.output_names(meta)
    with torch.inference_mode():
        ours = dict(zip(names, (t.double().numpy() for t in wrapped(torch.from_numpy(batches[0])))))
    ours["p_malignant"] = model.predictions([ours["logits"]], meta)[0]
    scales = {name: max(onnx_file.largest(np.abs(value)), 1e-12) for name, value in ours.items()}
    scales.update(logits=max(scales["logits"], 1.0), p_malignant=1.0)
    found = dict.fromkeys(names, 0.0)
    for part in batches:
        theirs = dict(zip(names, session.run(names, {"image": part})))
        for name in names:
            difference = onnx_file.largest(np.abs(ours[name][: len(part)] - theirs[name]) / scales[name])
            found[name] = onnx_file.largest([found[name], difference])
    return found


def labelled_photos(folder, meta):
    """(preprocessed photos, 1 malignant / 0 benign by their class folder, or None where a photo has none)."""
    paths = photos.find_images([folder])[0] if os.path.isdir(folder) else []
    malignant = dict(zip(meta["classes"], model.malignant_mask(meta).tolist()))
    cfg, images, y = model_file.meta_data_config(meta), [], []
    for path in paths:
        img, _ = photos.try_load_image(path)
        if img is not None:
            images.append(photos.preprocess(img, cfg))
            y.append(malignant.get(os.path.basename(os.path.dirname(path))))
    labelled = y and None not in y
    return np.stack(images) if images else None, np.array(y, dtype=int) if labelled else None


class TwinRefused(Exception):
    """The int8 twin fails the check every model file gets (onnx_file.self_check_fault): it is not written."""


def twin_self_check(small, meta):
    """The int8 twin's own self_check (its outputs on onnx_file.check_inputs); TwinRefused where the twin fails the
    check load_onnx makes (a twin that finds no check input unfamiliar, say)."""
    checks = onnx_file.check_inputs(meta["image_size"])
    names = onnx_file.output_names(meta)
    own = onnx_file.self_check_record(dict(zip(names, small.run(names, {"image": checks}))))
    fault = onnx_file.self_check_fault(small, dict(meta, self_check=own), model.p_malignant)
    if fault:
        raise TwinRefused(fault)
    return own


def write_int8_twin(args, meta):
    """The int8 twin of args.output (skinlesion/quantise.py: weights stored int8 or float16, turned back to float in
    the graph, the layers' biases corrected for the rounding on the photos' means), the smallest that keeps within
    tolerance on QUANTISE_IMAGES (quantise.smallest_within): written with its comparison with the full model in its
    metadata, from which the page's rule decides whether the page uses it (quantise.within_tolerance); not written
    where it fails the check every model file gets. Returns its path, or None when none was written."""
    import onnx

    twin = quantise.quantised_path(args.output)
    x, y = labelled_photos(args.quantise_images, meta)
    images = messages.printable(args.quantise_images)
    if x is None and "quantise_images" in args.given:
        raise messages.UserError(
            f"--quantise-images {images} holds no readable photo; pass a folder of validation photos"
        )
    if x is None:
        print(f"no int8 twin written: no photos in {images} to compare it on (--quantise-images)")
        return None
    full, speeds = onnx_file.cpu_session(args.output), {}
    floor = (meta.get("familiarity") or {}).get("floor")
    floor = None if floor is None else float(floor)
    depth_count = len(quantise.depths(onnx.load(args.output).graph))
    means = quantise.layer_input_means(args.output, x)  # for the bias correction, from the same photos

    def quantise_and_compare(tmp):
        def judge(int8_depths):
            quantise.quantise(args.output, tmp, int8_depths, floor=floor, means=means)
            return twin_comparison(full, onnx_file.cpu_session(tmp), x, y, meta)

        chosen, result = quantise.smallest_within(depth_count, judge)
        quantise.quantise(args.output, tmp, chosen, floor=floor, means=means)  # the one chosen, last written or not
        small = onnx_file.cpu_session(tmp)
        result.update(int8_depths=chosen, depths=depth_count, from_sha256=files.file_sha256(args.output))
        result.update(photos_from=os.path.basename(args.quantise_images))
        speeds.update(full=quantise.seconds_per_photo(full, x), int8=quantise.seconds_per_photo(small, x))
        onnx_file.copy_metadata(tmp, args.output, twin_self_check(small, meta), result)
        speeds["result"] = result

    try:
        files.atomic_write(twin, quantise_and_compare, "ONNX model")
    except TwinRefused as e:
        print(f"no int8 twin {messages.printable(twin)} written: it fails the check every model file gets ({e})")
        return None
    ratio = os.path.getsize(twin) / os.path.getsize(args.output)
    print(
        f"wrote {messages.printable(twin)} ({os.path.getsize(twin) / 1e6:.1f} MB, {ratio:.2f} of the full model; "
        f"{quantise.weights_text(speeds['result'])}; {speeds['int8'] * 1e3:.0f} ms a photo against "
        f"{speeds['full'] * 1e3:.0f} ms here): {quantise.comparison_text(speeds['result'])}"
    )
    return twin


def twin_comparison(full, small, x, y, meta):
    """quantise.comparison of the twin's session small with the full model's on photos x (labels y)."""
    names = ["p_malignant"] + (["familiarity_distance"] if meta.get("familiarity") else [])
    (p_full, *d_full), (p_int8, *d_int8) = quantise.outputs(full, x, names), quantise.outputs(small, x, names)
    limit = (meta.get("familiarity") or {}).get("limit")
    distances = (d_full[0], d_int8[0]) if d_full else None
    return quantise.comparison(p_full, p_int8, y, meta["threshold"], answer.BORDERLINE, distances, limit)


def check_parity(args, found, described):
    """fail unless every output's largest difference (differences) is within --tolerance, naming those that are not;
    else say how close they came."""
    compared = "the logits, P(malignant) and the evidence map"
    if "familiarity_distance" in found:
        compared = "the logits, P(malignant), the evidence map and the familiarity distance"
    off = [f"{name} by {difference:.2e}" for name, difference in found.items() if not difference <= args.tolerance]
    if off:
        raise messages.UserError(
            f"onnxruntime and PyTorch disagree on {described}: {', '.join(off)}, over --tolerance "
            f"{args.tolerance:.0e} (largest differences, relative but p_malignant's); "
            f"{messages.printable(args.output)} not written"
        )
    print(
        f"onnxruntime matches PyTorch: largest difference {max(found.values()):.2e} in {compared} "
        f"(--tolerance {args.tolerance:.0e}) on {described}"
    )


def written_text(args, meta):
    """What export_onnx.py says of the ONNX file it wrote: its size, the check passed, its opset, inputs, outputs."""
    size, n = meta["image_size"], len(meta["classes"])
    side = backbone.cam_side(meta["image_size"], meta["network"]["stride"])
    also = ", 'familiarity_distance' [batch]" if meta.get("familiarity") else ""
    output = messages.printable(args.output)
    return (
        f"wrote {output} ({os.path.getsize(args.output) / 1e6:.1f} MB, onnx.checker passed, opset {args.opset}, "
        f"input 'image' [batch, 3, {size}, {size}], outputs 'logits' [batch, {n}], 'p_malignant' [batch]{also} and "
        f"'cam' [batch, {side}, {side}])"
    )


def main(argv=None):
    args = parse_args(argv)
    import onnx
    import torch

    net, meta = model.load_checkpoint(args.model)  # one error line if missing, broken or not a checkpoint
    sha256 = files.file_sha256(args.model)  # its identity, in the ONNX file and the card
    meta["network"] = backbone.network_shape(net)  # what the graph must show, from the network (not the file's word)
    wrapped = exportable(net.float().to(memory_format=torch.contiguous_format).eval(), meta)
    x, described = check_photos(
        args.check_images, args.n_check, model_file.meta_data_config(meta), "check_images" in args.given
    )

    def export_and_check(tmp):  # inside files.atomic_write: a failed check leaves nothing behind
        checked = torch_self_check(wrapped, meta)
        export(wrapped, meta["image_size"], tmp, args.opset, onnx_metadata(meta, args.model, sha256, checked))
        onnx.checker.check_model(tmp, full_check=True)
        check_parity(args, differences(wrapped, meta, tmp, x), f"{described}, batch of {max(len(x), 2)} and of 1")
        session = onnx_file.cpu_session(tmp)
        fault = onnx_file.self_check_fault(session, dict(meta, self_check=checked), model.p_malignant)
        if fault:
            raise messages.UserError(
                f"the exported file fails the check every script makes of a model file: {fault}; "
                f"{messages.printable(args.output)} not written (every script would refuse it); retrain the model"
            )

    files.atomic_write(args.output, export_and_check, "ONNX model")
    print(written_text(args, meta))
    twin = write_int8_twin(args, meta) if args.quantise else None
    record_in_card(args.model, sha256, meta, {path: files.file_sha256(path) for path in (args.output, twin) if path})
    print(f"use it with: python predict.py photo.jpg --model {messages.printable(shlex.quote(args.output))}")


if __name__ == "__main__":
    sys.exit(interrupts.run_script(main, "interrupted; nothing written"))
