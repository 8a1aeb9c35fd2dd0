"""
How fast is the pipeline on this machine (CPU, or a CUDA GPU when there is one)? Training, prediction,
prepare_dataset.py and peak memory, as ratios measured in one run, then the table in markdown. A measuring tool;
what it measures in full: docs/reference.md; results: docs/measurements.md.

    python tools/bench.py                             # defaults: under 10 min on 2 CPU cores
    python tools/bench.py --rounds 3 --no-prepare --no-predict --work-dir /tmp/bench   # training only; keeps data
"""

import os
import shutil
import statistics
import sys
import tempfile
import time

from skinlesion import interrupts

if __name__ == "__main__":  # before the libraries load: a Ctrl-C while they do is one line, not a traceback
    interrupts.one_line_while_loading()
import growth  # noqa: E402
import measure  # noqa: E402

import model  # noqa: E402
from skinlesion import devices, flags, folders, messages, model_file, photos, splits, training  # noqa: E402

# -----------------------------------------------------------------------------
IMAGE_SIZE = 224  # network input in px, 32 to 2048
BATCH_SIZE = 32  # images per training step (AItraining.py's default), >= 1
WARMUP = 3  # training steps run before timing, >= 0 (on CPU the first steps are up to 2x slower)
STEPS = 8  # timed training steps per measurement, >= 1
ROUNDS = 5  # model alone and the real loop are measured this many times, alternately, >= 1
NUM_WORKERS = measure.training_default("NUM_WORKERS")  # data-loading processes (AItraining.py's default), >= 0
DEMO_PHOTO_SIZE = 2400  # longer side of the synthetic photos in px, 64 to 10000
N_PREPARE_IMAGES = 1000  # photos for the prepare_dataset.py benchmark (demo photos repeated), >= 1
COLD_RUNS = 3  # fresh predict.py processes per model format (the median counts), >= 1
WARM_RUNS = 20  # in-process predictions per format (the median counts), >= 1
COMPILE = False  # also measure torch.compile (compiling takes ~2-3 min on 2 CPU cores)
AMP = True  # also measure bfloat16 autocast, where the CPU or GPU has native bf16
TRAIN = True  # the training measurements
PREDICT = True  # the prediction measurements (exports an ONNX file first)
PREPARE = True  # the prepare_dataset.py measurements
MEMORY = True  # peak memory of one AItraining.py epoch at IMAGE_SIZE, BATCH_SIZE
GROWTH = []  # photo counts for the growth table, e.g. 1000 10000 50000 (prepare, disk, training at each); [] = none
GROWTH_PHOTO_SIZE = 320  # longer side of the growth table's synthetic photos in px, 64 to 10000
WORK_DIR = None  # folder for data and models: new, empty or made by bench.py; kept, re-used. None = a temporary one
# -----------------------------------------------------------------------------
HERE = measure.ROOT  # where the scripts it runs are
ENV = {"HF_HUB_OFFLINE": "1"}  # the scripts it runs never reach the hub


def parse_args(argv=None):
    """The flags, every value checked before any work (one error line)."""
    args = flags.parse_flags(globals(), argv, types={"WORK_DIR": str, "GROWTH": int})
    flags.check(all(n >= 2 for n in args.growth), "--growth", args.growth, "use photo counts >= 2")
    if args.work_dir is not None:
        check_work_dir(args.work_dir)
    return args


def check_work_dir(path):
    """Raise UserError unless bench.py may write in path: a new or empty folder, or one an earlier bench.py run
    made (its mark inside); never a folder of other files (a project folder's skin_model.pth would be replaced)."""
    flags.check_writable(path, "--work-dir", folder=True)
    if os.path.isdir(path) and os.listdir(path) and not folders.made_here(path):
        found = messages.first_few(sorted(os.listdir(path)))
        raise messages.UserError(
            f"--work-dir {messages.printable(path)} holds files that bench.py did not make ({found}); pass a new or "
            "empty folder, or one an earlier bench.py run made"
        )


def script(name, *args):
    return [sys.executable, os.path.join(HERE, name), *map(str, args)]


def run(cmd, measure_memory=False, cwd=None):
    return measure.run(cmd, measure_memory, ENV, cwd)


def train_speed(batch_source, args, device, compiled=False, amp=False, contiguous=False):
    """(images/s over the steps after WARMUP, seconds of the first step) of training.train_one_epoch."""
    import torch

    torch.manual_seed(0)
    net = model.build_model(pretrained=False)[0].to(device)
    if not contiguous:
        net = model.prepare_for_device(net, device)
    recipe = model.RECIPES["scratch"]
    optimizer = model.make_optimizer(net, recipe["optimizer"], recipe["lr"], recipe["weight_decay"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    if compiled:
        net = torch.compile(net)
    times = []
    timed = measure.timed(batch_source, times)
    training.train_one_epoch(net, timed, model.make_criterion(0.1), optimizer, scheduler, amp, "bench")
    return measure.per_second(times, args.warmup, args.batch_size), times[1] - times[0]


def random_batches(args, device, channels_last=True):
    """The same batch of random tensors on the device, for every step."""
    import torch

    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return [(x, torch.randint(0, 2, (args.batch_size,), device=device))] * (args.warmup + args.steps)


def loop_batches(split, args, cfg, device):
    """AItraining.py's training batches (training.train_batches) over a Split, as many as the measurement needs."""
    import torch

    g, g_device = torch.Generator().manual_seed(0), torch.Generator(device=device).manual_seed(0)
    order = torch.randint(len(split.paths), ((args.warmup + args.steps) * args.batch_size,), generator=g)
    return training.train_batches(split, args.batch_size, cfg, g, g_device, order=order)


def naive_batches(args, data_dir, device):
    """A first version's data: ImageFolder over the full-size photos, torchvision's loader and transforms, no
    workers, moved to the device batch by batch."""
    import torch
    from torchvision import datasets, transforms

    normalise = transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    tf = transforms.Compose([transforms.RandomResizedCrop(args.image_size), transforms.ToTensor(), normalise])
    ds = datasets.ImageFolder(os.path.join(data_dir, "train"), transform=tf)
    n = (args.warmup + args.steps) * args.batch_size
    sampler = torch.utils.data.RandomSampler(ds, replacement=True, num_samples=n)
    for x, y in torch.utils.data.DataLoader(ds, batch_size=args.batch_size, sampler=sampler, num_workers=0):
        yield x.to(device), y.to(device)


def loop_rows(cached, args, cfg, device):
    """(The rows of the model alone and of AItraining.py's real loop over the cached photos, measured ROUNDS times
    alternately (a burst of other work hits both alike), the median images/s of each)."""
    alone, loop = [], []
    for r in range(args.rounds):  # alternately, so that a burst of other work hits both alike
        print(f"training, round {r + 1}/{args.rounds}: model alone, AItraining.py loop ...", flush=True)
        alone.append(train_speed(random_batches(args, device), args, device)[0])
        loop.append(train_speed(loop_batches(cached, args, cfg, device), args, device)[0])
    ratios = sorted(b / a for a, b in zip(alone, loop))
    base, looped, ratio = statistics.median(alone), statistics.median(loop), statistics.median(ratios)
    target = 0.95
    if device.type == "cuda":
        target = 0.85
    size, kind = f"{args.image_size} px, batch {args.batch_size}", device.type
    rows = [
        (f"train, model alone ({size}, random tensors on {kind})", f"{base:.1f} img/s", "1.00", "reference"),
        (
            f"train, AItraining.py loop (photos cached on {kind}, augmented there)",
            f"{looped:.1f} img/s",
            f"{ratio:.2f} of model alone (rounds {ratios[0]:.2f}-{ratios[-1]:.2f})",
            f">= {target}: {measure.ok(ratio >= target)}",
        ),
    ]
    return rows, base, looped


def other_data_rows(streamed, args, cfg, full, device, base, looped):
    """The rows of the other data paths: the streaming fallback, the naive first version, and the model alone in
    contiguous memory format (base, looped: the model alone's and the real loop's images/s)."""
    stream = train_speed(loop_batches(streamed, args, cfg, device), args, device)[0]
    naive = train_speed(naive_batches(args, full, device), args, device, contiguous=True)[0]
    plain = train_speed(random_batches(args, device, channels_last=False), args, device, contiguous=True)[0]
    return [
        (
            f"train, streaming fallback ({args.num_workers} workers decoding 256 px JPEGs)",
            f"{stream:.1f} img/s",
            f"{stream / base:.2f} of model alone",
            "",
        ),
        (
            f"train, naive ({args.demo_photo_size} px JPEGs, 0 workers, contiguous)",
            f"{naive:.1f} img/s",
            f"AItraining.py {looped / naive:.1f}x faster",
            "",
        ),
        (
            "train, model alone, contiguous memory format",
            f"{plain:.1f} img/s",
            f"{plain / base:.2f} of channels_last",
            "",
        ),
    ]


def option_rows(args, device, base):
    """The rows of bf16 autocast (--amp, where the CPU or GPU has native bf16) and torch.compile (--compile) against
    the model alone's images/s (base)."""
    rows = []
    native, why = measure.native_bf16(device)
    if args.amp and native:
        print("training: bf16 autocast ...", flush=True)
        bf16 = train_speed(random_batches(args, device), args, device, amp=True)[0]
        rows.append(
            (
                "train, model alone, bf16 autocast",
                f"{bf16:.1f} img/s",
                f"{bf16 / base:.2f} of plain",
                "AItraining.py AMP",
            )
        )
    elif args.amp:
        rows.append(("train, model alone, bf16 autocast", "not measured", why, "AMP stays off"))
    if args.compile:
        print("training: torch.compile ...", flush=True)
        fast, first = train_speed(random_batches(args, device), args, device, compiled=True)
        what = f"train, model alone, torch.compile (first step, compiling: {first:.0f} s)"
        rows.append((what, f"{fast:.1f} img/s", f"{fast / base:.2f} of plain", "AItraining.py COMPILE"))
    return rows


def bench_training(args, small, full, device):
    """Training images/s: the model alone (random tensors on the device) against AItraining.py's real loop (the
    photos at 256 px cached on the device), the streaming fallback, a naive first version over the full-size
    photos (full), the contiguous memory format, bf16 autocast and torch.compile."""
    net = model.build_model(pretrained=False)[0]
    cfg = model.data_config(net, args.image_size)
    short = photos.short_side(args.image_size, cfg["crop_pct"])
    paths, labels = splits.split_photos(small, "train", model.CLASSES)
    crops = photos.Photos(paths, short, 1.0, cfg["interpolation"])
    cached = training.Split(crops, labels, True, args.num_workers, device, "caching")
    rows, base, looped = loop_rows(cached, args, cfg, device)
    print("training: streaming fallback, naive baseline, contiguous memory format ...", flush=True)
    streamed = training.Split(crops, labels, False, args.num_workers, device, "")
    rows += other_data_rows(streamed, args, cfg, full, device, base, looped)
    return rows + option_rows(args, device, base)


def bench_memory(args, work, small):
    print("memory: one AItraining.py epoch ...", flush=True)
    size = ["--image-size", args.image_size, "--batch-size", args.batch_size]
    cmd = script("AItraining.py", "--data-dir", small, "--epochs", 1, "--no-pretrained", "--folds", 1, *size)
    peak = run(cmd, measure_memory=True, cwd=work)[1]
    return [
        (
            f"peak memory, AItraining.py epoch ({args.image_size} px, batch {args.batch_size}, cache included)",
            f"{peak / 1e9:.2f} GB",
            f"{peak / 6e9:.2f} of 6 GB",
            f"< 6 GB: {measure.ok(peak < 6e9)}",
        )
    ]


def warm_predictors(net, meta, session, onnx_meta):
    """photo -> P(malignant) as predict.py computes it (without the map), with PyTorch and with onnxruntime."""
    import torch

    def with_torch(img):
        x = torch.from_numpy(photos.preprocess(img, model_file.meta_data_config(meta)))[None]
        return model.predictions(model.view_logits(net, x), meta)[0]

    def with_onnx(img):
        x = photos.preprocess(img, model_file.meta_data_config(onnx_meta))[None]
        return session.run(["p_malignant"], {session.get_inputs()[0].name: x})[0]

    return with_torch, with_onnx


def bench_predict(args, work, photo, data_dir):
    """Cold (fresh predict.py process) and warm (in-process) latency of one photo, PyTorch vs onnxruntime, with
    a random-weight model (at chance: the work is the same as a trained one's)."""
    import torch

    print("prediction: export, cold and warm ...", flush=True)
    pth, onnx = os.path.join(work, "skin_model.pth"), os.path.join(work, "skin_model.onnx")
    net = model.build_model(pretrained=False)[0]
    chance = dict(val_metrics={"roc_auc": 0.5}, val_auc_ci95=[0.5, 0.5], at_chance=True)
    model_file.save_checkpoint(pth, model_file.checkpoint_state(net, model.data_config(net, args.image_size), **chance))
    run(script("export_onnx.py", "--model", pth, "--output", onnx, "--check-images", os.path.join(data_dir, "test")))
    cold = {pth: [], onnx: []}
    for path in [pth, onnx] * (args.cold_runs + 1):  # the first run of each only fills the file cache
        cold[path].append(run(script("predict.py", photo, "--model", path), cwd=work)[0])
    net, meta = model.load_checkpoint(pth)
    img = photos.load_image(photo)
    session, onnx_meta = model.load_onnx(onnx)
    torch_once, onnx_once = warm_predictors(net, meta, session, onnx_meta)
    with torch.inference_mode():
        for _ in range(3):  # warm-up
            torch_once(img)
            onnx_once(img)
        warm_pt = measure.median_seconds(lambda: torch_once(img), args.warm_runs)
        warm_onnx = measure.median_seconds(lambda: onnx_once(img), args.warm_runs)
    cold_pt, cold_onnx = statistics.median(cold[pth][1:]), statistics.median(cold[onnx][1:])
    help_imports = measure.imports_of(script("predict.py", "--help"), ENV, work)
    onnx_imports = measure.imports_of(script("predict.py", photo, "--model", onnx), ENV, work)
    return [
        (
            f"imports: predict.py --help {help_imports:.2f} s",
            f"predict.py with the ONNX file {onnx_imports:.2f} s",
            "",
            f"--help < 0.5 s: {measure.ok(help_imports < 0.5)}",
        ),
        (
            f"predict 1 photo, fresh process: PyTorch {cold_pt:.2f} s",
            f"ONNX {cold_onnx:.2f} s",
            f"ONNX {cold_pt / cold_onnx:.1f}x faster",
            "",
        ),
        (
            f"predict 1 photo, warm: PyTorch {warm_pt * 1e3:.1f} ms",
            f"ONNX {warm_onnx * 1e3:.1f} ms",
            f"ONNX {warm_pt / warm_onnx:.1f}x faster",
            "",
        ),
    ]


def bench_prepare(args, work, demo):
    n, cores = args.n_prepare_images, os.cpu_count()
    print(f"prepare_dataset.py: {n} photos, all cores, then one ...", flush=True)
    export = os.path.join(os.path.dirname(demo), f"export_{n}")
    if not os.path.isdir(export):
        measure.distinct_copies_export(demo, export, n)
    csv, out = os.path.join(export, "metadata.csv"), os.path.join(work, "prepared")
    seconds, peak = {}, 0
    for workers in [cores, 1]:
        options = ["--metadata-csv", csv, "--dataset-dir", out, "--n-per-class", n, "--workers", workers]
        seconds[workers], mem = run(script("prepare_dataset.py", "--images-dir", export, *options), True)
        peak = max(peak, mem)
    return [
        (
            f"prepare_dataset.py, {n} photos: 1 worker {n / seconds[1]:.1f} img/s",
            f"{cores} workers {n / seconds[cores]:.1f} img/s",
            f"{seconds[1] / seconds[cores]:.2f}x the speed of 1",
            "",
        ),
        (
            "peak memory, prepare_dataset.py",
            f"{peak / 1e9:.2f} GB",
            f"{peak / 1e9:.2f} of 1 GB",
            f"< 1 GB: {measure.ok(peak < 1e9)}",
        ),
    ]


def make_data(args, data):
    """(demo export, its photos at 256 px, as they are) under data, each made where missing (re-used otherwise)
    and only where a measurement needs it."""
    demo, small, full = (os.path.join(data, d) for d in ("demo", "dataset_256", "dataset_full"))
    prepare = ["--metadata-csv", os.path.join(demo, "metadata.csv"), "--images-dir", demo]
    if not os.path.isfile(os.path.join(demo, "metadata.csv")):  # make_demo_data.py writes it last
        run(script("make_demo_data.py", "--out-dir", demo, "--photo-size", args.demo_photo_size))
    if (args.train or args.memory or args.predict) and not os.path.isdir(small):
        run(script("prepare_dataset.py", *prepare, "--dataset-dir", small, "--resize-to", 256))
    if args.train and not os.path.isdir(full):
        run(script("prepare_dataset.py", *prepare, "--dataset-dir", full, "--resize-to", "none"))
    return demo, small, full


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as AItraining.py sets it, before torch loads
    device = devices.pick_device()
    work = args.work_dir or tempfile.mkdtemp(prefix="bench-")
    os.makedirs(work, exist_ok=True)
    if not folders.made_here(work):
        folders.mark_folder(work, "bench.py", "work folder")  # kept and re-used by its next runs
    load, started, rows = os.getloadavg()[0], time.time(), []
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(work, "inductor")  # compile afresh (kept in a WORK_DIR)
    print(f"machine: {measure.machine(device)}\nload average at start: {load:.2f}; work dir {work}", flush=True)
    try:
        data = os.path.join(work, f"photos_{args.demo_photo_size}px")  # re-used only at the same size
        if args.train or args.memory or args.predict or args.prepare:
            demo, small, full = make_data(args, data)
        if args.train:
            rows += bench_training(args, small, full, device)
        if args.memory:
            rows += bench_memory(args, work, small)
        if args.predict:
            rows += bench_predict(args, work, os.path.join(demo, "unseen", "malignant_1.jpg"), small)
        if args.prepare:
            rows += bench_prepare(args, work, demo)
        if args.growth:
            small_demo = os.path.join(work, f"photos_{args.growth_photo_size}px", "demo")
            if not os.path.isfile(os.path.join(small_demo, "metadata.csv")):
                run(script("make_demo_data.py", "--out-dir", small_demo, "--photo-size", args.growth_photo_size))
            growth_rows = growth.table(args, work, small_demo, HERE, ENV, measure.training_default("CACHE_GB"))
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    print(
        f"\nmachine: {measure.machine(device)}\nload average (1 min): {load:.2f} at the start, "
        f"{os.getloadavg()[0]:.2f} at the end; bench took {time.time() - started:.0f} s\n"
    )
    print(measure.plain_table(rows) + "\n\n" + measure.markdown_table(rows))
    if args.growth:
        print("\ngrowth (" + measure.machine(device) + ")\n" + measure.markdown_table(growth_rows, growth.HEAD))


if __name__ == "__main__":
    sys.exit(interrupts.run_script(main))
