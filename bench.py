"""
How fast is the pipeline on this machine (CPU, or a CUDA GPU when there is one)? One run measures, on the same
machine, and prints as ratios: training images/s of the model alone (random tensors already on the device)
vs AItraining.py's real loop (its cache of the prepared photos on the device, augmentation on the device)
vs its streaming fallback (DataLoader workers decoding every batch) vs a naive first version (ImageFolder
over the full-size photos, Pillow transforms, no workers, contiguous memory format); bf16 autocast (only where
the CPU or GPU has native bf16) and torch.compile (only with --compile) vs plain; predicting one photo with
PyTorch vs onnxruntime (a fresh process, and warm in-process); prepare_dataset.py on all cores vs one; peak
memory of a training epoch and of prepare_dataset.py. Then the same table in markdown, for the README.

    python bench.py                                   # defaults: under 10 min on 2 CPU cores
    python bench.py --rounds 3 --no-prepare --no-predict --work-dir /tmp/bench   # training only; keeps the data

Model alone and the real loop are measured ROUNDS times, alternately (a burst of other work hits both alike);
their ratio is given as the median over rounds with the lowest and highest. Data: make_demo_data.py writes
synthetic DEMO_PHOTO_SIZE px photos (like real clinical photos), prepared twice: shrunk to 256 px as the
pipeline does, and copied as they are for the naive baseline. For the prepare benchmark the demo photos are
copied N_PREPARE_IMAGES times under new ids (one comment byte changed, so none is a duplicate). Training runs
in this process with AItraining.py's OpenMP setting (OMP_WAIT_POLICY=PASSIVE). Memory is the peak of the summed
PSS of a process and its children (Linux /proc). Other programs running at the same time slow everything down,
unevenly: the load average is printed at the start and the end; compare only numbers from one run.
"""

import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import AItraining
import model
from skinlesion import batches, cli, devices, photos, training

# -----------------------------------------------------------------------------
IMAGE_SIZE = 224  # network input in px
BATCH_SIZE = 32  # images per training step (AItraining.py's default)
WARMUP = 3  # training steps run before timing (on CPU the first steps are up to 2x slower)
STEPS = 8  # timed training steps per measurement
ROUNDS = 5  # model alone and the real loop are measured this many times, alternately
NUM_WORKERS = AItraining.NUM_WORKERS  # data-loading processes of the streaming and naive measurements
DEMO_PHOTO_SIZE = 2400  # longer side of the synthetic photos in px
N_PREPARE_IMAGES = 1000  # photos for the prepare_dataset.py benchmark (demo photos repeated)
COLD_RUNS = 3  # fresh predict.py processes per model format (the median counts)
WARM_RUNS = 20  # in-process predictions per format (the median counts)
COMPILE = False  # also measure torch.compile (compiling takes ~2-3 min on 2 CPU cores)
AMP = True  # also measure bfloat16 autocast, where the CPU or GPU has native bf16
TRAIN = True  # the training measurements
PREDICT = True  # the prediction measurements (exports an ONNX file first)
PREPARE = True  # the prepare_dataset.py measurements
MEMORY = True  # peak memory of one AItraining.py epoch at IMAGE_SIZE, BATCH_SIZE
WORK_DIR = None  # folder for data and models, kept and re-used next time; None = a temporary one, removed
# -----------------------------------------------------------------------------
HERE = os.path.dirname(os.path.abspath(__file__))


def timed(batches, times):
    """batches; times[i] = when batch i was asked for, times[-1] = when the loop asked past the end."""
    batches = iter(batches)
    while True:
        times.append(time.perf_counter())
        batch = next(batches, None)
        if batch is None:
            return
        yield batch


def train_speed(batches, args, device, compile=False, amp=False, contiguous=False):
    """(images/s over the steps after WARMUP, seconds of the first step) of AItraining.train_one_epoch."""
    import torch

    torch.manual_seed(0)
    net = model.build_model(pretrained=False)[0].to(device)
    net = net if contiguous else model.prepare_for_device(net, device)
    recipe = model.RECIPES["scratch"]
    optimizer = model.make_optimizer(net, recipe["optimizer"], recipe["lr"], recipe["weight_decay"])
    times = []
    training.train_one_epoch(
        torch.compile(net) if compile else net,
        timed(batches, times),
        model.make_criterion(0.1),
        optimizer,
        torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0),
        amp,
        "bench",
    )
    return (len(times) - 1 - args.warmup) * args.batch_size / (times[-1] - times[args.warmup]), times[1] - times[0]


def random_batches(args, device, channels_last=True):
    import torch

    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    return [(x, torch.randint(0, 2, (args.batch_size,), device=device))] * (args.warmup + args.steps)


def loop_batches(split, args, cfg, device):
    """AItraining.py's training batches (model.train_batches) over a Split, as many as the measurement needs."""
    import torch

    g, g_device = torch.Generator().manual_seed(0), torch.Generator(device=device).manual_seed(0)
    order = torch.randint(len(split.paths), ((args.warmup + args.steps) * args.batch_size,), generator=g)
    return batches.train_batches(split, args.batch_size, cfg, g, g_device, order=order)


def naive_batches(args, data_dir):
    """A first version's data: ImageFolder over the full-size photos, torchvision's loader and transforms, no
    workers."""
    import torch
    from torchvision import datasets, transforms

    tf = transforms.Compose(
        [
            transforms.RandomResizedCrop(args.image_size),
            transforms.ToTensor(),
            transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )
    ds = datasets.ImageFolder(os.path.join(data_dir, "train"), transform=tf)
    sampler = torch.utils.data.RandomSampler(
        ds, replacement=True, num_samples=(args.warmup + args.steps) * args.batch_size
    )
    return torch.utils.data.DataLoader(ds, batch_size=args.batch_size, sampler=sampler, num_workers=0)


def native_bf16(device):
    """(whether the device computes bf16 natively, why not)."""
    import torch

    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(), "this GPU has no native bf16"
    flags = ""
    if os.path.isfile("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    return ("avx512_bf16" in flags or "amx_bf16" in flags), "this CPU has no native bf16 (no AVX512_BF16 or AMX)"


def bench_training(args, small, full, device):
    net = model.build_model(pretrained=False)[0]
    cfg = model.data_config(net, args.image_size)
    short = int(args.image_size / cfg["crop_pct"])
    paths, labels = AItraining.photo_split(small, "train", model.CLASSES)
    crops = photos.Photos(paths, short, 1.0, cfg["interpolation"])
    cached = batches.Split(crops, labels, True, args.num_workers, device, "caching")
    alone, loop = [], []
    for r in range(args.rounds):  # alternately, so that a burst of other work hits both alike
        print(f"training, round {r + 1}/{args.rounds}: model alone, AItraining.py loop ...", flush=True)
        alone.append(train_speed(random_batches(args, device), args, device)[0])
        loop.append(train_speed(loop_batches(cached, args, cfg, device), args, device)[0])
    ratios = sorted(b / a for a, b in zip(alone, loop))
    base, target = statistics.median(alone), 0.85 if device.type == "cuda" else 0.95
    print("training: streaming fallback, naive baseline, contiguous memory format ...", flush=True)
    streamed = batches.Split(crops, labels, False, args.num_workers, device, "")
    stream = train_speed(loop_batches(streamed, args, cfg, device), args, device)[0]
    naive = train_speed(
        ((x.to(device), y.to(device)) for x, y in naive_batches(args, full)), args, device, contiguous=True
    )[0]
    plain = train_speed(random_batches(args, device, channels_last=False), args, device, contiguous=True)[0]
    rows = [
        (
            f"train, model alone ({args.image_size} px, batch {args.batch_size}, random tensors on {device.type})",
            f"{base:.1f} img/s",
            "1.00",
            "reference",
        ),
        (
            f"train, AItraining.py loop (photos cached on {device.type}, augmented there)",
            f"{statistics.median(loop):.1f} img/s",
            f"{statistics.median(ratios):.2f} of model alone (rounds {ratios[0]:.2f}-{ratios[-1]:.2f})",
            f">= {target}: {ok(statistics.median(ratios) >= target)}",
        ),
        (
            f"train, streaming fallback ({args.num_workers} workers decoding 256 px JPEGs)",
            f"{stream:.1f} img/s",
            f"{stream / base:.2f} of model alone",
            "",
        ),
        (
            f"train, naive ({args.demo_photo_size} px JPEGs, 0 workers, contiguous)",
            f"{naive:.1f} img/s",
            f"AItraining.py {statistics.median(loop) / naive:.1f}x faster",
            "",
        ),
        (
            "train, model alone, contiguous memory format",
            f"{plain:.1f} img/s",
            f"{plain / base:.2f} of channels_last",
            "",
        ),
    ]
    native, why = native_bf16(device)
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
        fast, first = train_speed(random_batches(args, device), args, device, compile=True)
        rows.append(
            (
                f"train, model alone, torch.compile (first step, compiling: {first:.0f} s)",
                f"{fast:.1f} img/s",
                f"{fast / base:.2f} of plain",
                "AItraining.py COMPILE",
            )
        )
    return rows


def script(name, *args):
    return [sys.executable, os.path.join(HERE, name), *map(str, args)]


def tree_pss(pid):
    """Summed PSS in bytes of pid and its descendants (PSS counts pages shared by forked workers once)."""
    parent = {}
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                parent[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    tree, total = {pid}, 0
    for _ in range(4):  # children, grandchildren, ...
        tree |= {p for p, pp in parent.items() if pp in tree}
    for p in tree:
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                total += next(int(line.split()[1]) * 1024 for line in f if line.startswith("Pss:"))
        except (OSError, StopIteration):
            continue
    return total


def run(cmd, measure_memory=False, **kw):
    """(seconds, peak memory in bytes or None) of a command, which must succeed."""
    start, peak = time.perf_counter(), 0
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        **kw,
    )
    while measure_memory and proc.poll() is None:
        peak = max(peak, tree_pss(proc.pid))
        time.sleep(0.2)
    out = proc.communicate()[0]
    if proc.returncode:
        cli.die(f"{' '.join(cmd)} failed:\n{out[-3000:]}")
    return time.perf_counter() - start, (peak if measure_memory else None)


def bench_memory(args, work, small):
    print("memory: one AItraining.py epoch ...", flush=True)
    _, peak = run(
        script(
            "AItraining.py",
            "--data-dir",
            small,
            "--epochs",
            1,
            "--no-pretrained",
            "--image-size",
            args.image_size,
            "--batch-size",
            args.batch_size,
        ),
        measure_memory=True,
        cwd=work,
    )
    return [
        (
            f"peak memory, AItraining.py epoch ({args.image_size} px, batch {args.batch_size}, cache included)",
            f"{peak / 1e9:.2f} GB",
            f"{peak / 6e9:.2f} of 6 GB",
            f"< 6 GB: {ok(peak < 6e9)}",
        )
    ]


def median_seconds(fn, n):
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_predict(args, work, photo, data_dir):
    """Cold (fresh predict.py process) and warm (in-process) latency of one photo, PyTorch vs onnxruntime."""
    import torch

    import predict

    print("prediction: export, cold and warm ...", flush=True)
    pth, onnx = os.path.join(work, "skin_model.pth"), os.path.join(work, "skin_model.onnx")
    net = model.build_model(pretrained=False)[0]
    model.save_checkpoint(pth, model.checkpoint_state(net, model.data_config(net, args.image_size)))
    run(script("export_onnx.py", "--model", pth, "--output", onnx, "--check-images", os.path.join(data_dir, "test")))
    cold = {}
    for path in [pth, onnx] * (args.cold_runs + 1):  # the first run of each only fills the file cache
        cold.setdefault(path, []).append(run(script("predict.py", photo, "--model", path), cwd=work)[0])
    net, meta = model.load_checkpoint(pth)
    img = photos.load_image(photo)
    session, onnx_meta = model.load_onnx(onnx)
    torch_once = predict.torch_predictor(net, meta, False, False)
    onnx_once = predict.onnx_predictor(session, onnx_meta, False, False)
    with torch.inference_mode():
        for _ in range(3):  # warm-up
            torch_once(img), onnx_once(img)
        warm_pt, warm_onnx = (median_seconds(lambda fn=fn: fn(img), args.warm_runs) for fn in (torch_once, onnx_once))
    cold_pt, cold_onnx = statistics.median(cold[pth][1:]), statistics.median(cold[onnx][1:])
    return [
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


def many_photos_export(demo_dir, out_dir, n):
    """An export of n distinct large JPEGs: the demo photos copied under new ids, each with a different JPEG
    comment (a COM segment) so its bytes, and so its sha256, differ; decoding is the same work."""
    import pandas as pd

    meta = pd.read_csv(os.path.join(demo_dir, "metadata.csv"))
    meta = meta[meta.image_type.eq("clinical: overview") & meta.diagnosis_1.isin(["Benign", "Malignant"])]
    rows = meta.sample(n, replace=True, random_state=0).reset_index(drop=True)
    os.makedirs(out_dir, exist_ok=True)
    for i, row in rows.iterrows():
        with open(os.path.join(demo_dir, row.isic_id + ".jpg"), "rb") as f:
            data = f.read()
        comment = f"copy {i}".encode()
        with open(os.path.join(out_dir, f"ISIC_{i:07d}.jpg"), "wb") as f:
            f.write(data[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + data[2:])
    rows.assign(isic_id=[f"ISIC_{i:07d}" for i in range(n)], lesion_id="", patient_id="").to_csv(
        os.path.join(out_dir, "metadata.csv"), index=False
    )


def bench_prepare(args, work, demo):
    print(f"prepare_dataset.py: {args.n_prepare_images} photos, all cores, then one ...", flush=True)
    export = os.path.join(work, f"export_{args.n_prepare_images}")
    if not os.path.isdir(export):
        many_photos_export(demo, export, args.n_prepare_images)
    seconds, peak = {}, 0
    for workers in [os.cpu_count(), 1]:
        seconds[workers], mem = run(
            script(
                "prepare_dataset.py",
                "--images-dir",
                export,
                "--metadata-csv",
                os.path.join(export, "metadata.csv"),
                "--dataset-dir",
                os.path.join(work, "prepared"),
                "--n-per-class",
                args.n_prepare_images,
                "--workers",
                workers,
            ),
            measure_memory=True,
        )
        peak = max(peak, mem)
    n, all_cores, one = args.n_prepare_images, seconds[os.cpu_count()], seconds[1]
    return [
        (
            f"prepare_dataset.py, {n} photos: 1 worker {n / one:.1f} img/s",
            f"{os.cpu_count()} workers {n / all_cores:.1f} img/s",
            f"{one / all_cores:.2f}x the speed of 1",
            "",
        ),
        (
            "peak memory, prepare_dataset.py",
            f"{peak / 1e9:.2f} GB",
            f"{peak / 1e9:.2f} of 1 GB",
            f"< 1 GB: {ok(peak < 1e9)}",
        ),
    ]


def ok(good):
    return "yes" if good else "NO"


def machine(device):
    import torch

    cpu = platform.processor()
    if os.path.isfile("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    gpu = f"{torch.cuda.get_device_name(device)}, " if device.type == "cuda" else ""
    return (
        f"{gpu}{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}), Python {platform.python_version()}"
    )


def print_tables(rows):
    """rows: (measurement, result, ratio, target) -> a plain table, then the same in markdown."""
    head = ("measurement", "result", "ratio", "target")
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(4)]
    for r in [head, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))
    print("\n| " + " | ".join(head) + " |\n|" + "---|" * 4)
    for r in rows:
        print("| " + " | ".join(map(str, r)) + " |")


def main(argv=None):
    args = cli.parse_flags(globals(), argv, types={"WORK_DIR": str})
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as AItraining.py sets it, before torch loads
    for flag in ("image_size", "batch_size", "warmup", "steps", "rounds", "n_prepare_images", "cold_runs", "warm_runs"):
        cli.check(
            getattr(args, flag) >= 1, "--" + flag.replace("_", "-"), getattr(args, flag), "use a whole number >= 1"
        )
    device = devices.pick_device()
    work = args.work_dir or tempfile.mkdtemp(prefix="bench-")
    os.makedirs(work, exist_ok=True)
    demo, small, full = (os.path.join(work, d) for d in ("demo", "dataset_256", "dataset_full"))
    load, started, rows = os.getloadavg()[0], time.time(), []
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(work, "inductor")  # compile afresh (kept in a WORK_DIR)
    print(f"machine: {machine(device)}\nload average at start: {load:.2f}; work dir {work}", flush=True)
    try:
        prepare = ["--metadata-csv", os.path.join(demo, "metadata.csv"), "--images-dir", demo]
        if not os.path.isdir(small):
            run(script("make_demo_data.py", "--out-dir", demo, "--photo-size", args.demo_photo_size))
            run(script("prepare_dataset.py", *prepare, "--dataset-dir", small, "--resize-to", 256))
        if args.train and not os.path.isdir(full):
            run(script("prepare_dataset.py", *prepare, "--dataset-dir", full, "--resize-to", "none"))
        rows += bench_training(args, small, full, device) if args.train else []
        rows += bench_memory(args, work, small) if args.memory else []
        rows += (
            bench_predict(args, work, os.path.join(demo, "unseen", "malignant_1.jpg"), small) if args.predict else []
        )
        rows += bench_prepare(args, work, demo) if args.prepare else []
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    print(
        f"\nmachine: {machine(device)}\nload average (1 min): {load:.2f} at the start, {os.getloadavg()[0]:.2f} "
        f"at the end; bench took {time.time() - started:.0f} s\n"
    )
    print_tables(rows)


if __name__ == "__main__":
    cli.run_script(main)
