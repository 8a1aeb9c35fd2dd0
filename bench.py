"""
How fast is the pipeline on this machine? One run measures, on the same machine, and prints as ratios:
training images/s of the model alone (random tensors) vs AItraining.py's real loop (its DataLoader over
prepared JPEGs) vs a naive first version (ImageFolder over the full-size photos, no workers, contiguous
memory format); the contiguous format, torch.compile and bf16 autocast vs plain; predicting one photo with
PyTorch vs onnxruntime (a fresh process, and warm in-process); prepare_dataset.py on all cores vs one; peak
memory of a training epoch and of prepare_dataset.py. Then the same table in markdown, for the README.

    python bench.py                                     # defaults: ~10 min on 2 idle CPU cores
    python bench.py --rounds 1 --n-prepare-images 400 --no-compile   # ~5 min
    python bench.py --image-size 128 --batch-size 64 --work-dir /tmp/bench  # keeps the data for next time

Data: prepare_dataset.py --demo writes synthetic DEMO_PHOTO_SIZE px photos (like real clinical photos) and
prepares them twice: shrunk to 256 px as the pipeline does, and copied as they are for the naive baseline.
For the prepare benchmark the demo photos are copied N_PREPARE_IMAGES times under new ids (one comment byte
changed, so none is a duplicate). All training runs in this process, with AItraining.py's OpenMP setting
(OMP_WAIT_POLICY=PASSIVE, see there). Memory is the peak of the summed PSS of a process and its children
(Linux /proc). Other programs running at the same time slow everything down, unevenly: the load average is
printed at the start and the end; compare only numbers from one run.
"""
import AItraining  # first: it sets OMP_WAIT_POLICY before torch loads OpenMP (see AItraining.py)

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import pandas as pd
import torch
from torch.utils.data import DataLoader, RandomSampler
from torchvision import datasets, transforms

import model

# -----------------------------------------------------------------------------
IMAGE_SIZE = 224  # network input in px
BATCH_SIZE = 32  # images per training step
WARMUP = 5  # training steps run before timing (on CPU the first ~5 steps are up to 2x slower)
STEPS = 8  # timed training steps per measurement
ROUNDS = 3  # model only and AItraining.py's loop are measured this many times, alternately; the best counts
NUM_WORKERS = AItraining.NUM_WORKERS  # data-loading processes of the AItraining.py measurement
DEMO_PHOTO_SIZE = 2400  # longer side of the synthetic photos in px
N_PREPARE_IMAGES = 2000  # photos for the prepare_dataset.py benchmark (demo photos repeated)
COLD_RUNS = 3  # fresh predict.py processes per model format (the median counts)
WARM_RUNS = 20  # in-process predictions per format (the median counts)
COMPILE = True  # also measure torch.compile (compiling takes ~2 min on 2 cores)
AMP = True  # also measure bfloat16 autocast
TRAIN = True  # the training measurements (model only, AItraining.py's loop, naive baseline)
PREDICT = True  # the prediction measurements (exports an ONNX file first)
PREPARE = True  # the prepare_dataset.py measurements
MEMORY = True  # peak memory of one AItraining.py epoch at IMAGE_SIZE, BATCH_SIZE
WORK_DIR = None  # folder for data and models, kept and re-used next time; None = a temporary one, removed
# -----------------------------------------------------------------------------
HERE = os.path.dirname(os.path.abspath(__file__))
CPU = torch.device("cpu")


def timed(loader, times):
    """loader's batches; times[i] = when batch i was asked for, times[-1] = when the loop asked past the end."""
    batches = iter(loader)
    while True:
        times.append(time.perf_counter())
        batch = next(batches, None)
        if batch is None:
            return
        yield batch


def images_per_s(times, warmup, batch_size):
    """Training throughput over the steps after the first warmup ones (data waits included)."""
    return (len(times) - 1 - warmup) * batch_size / (times[-1] - times[warmup])


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
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"}, **kw)
    if measure_memory:
        while proc.poll() is None:
            peak = max(peak, tree_pss(proc.pid))
            time.sleep(0.2)
    out = proc.communicate()[0]
    seconds = time.perf_counter() - start
    if proc.returncode:
        model.die(f"{' '.join(cmd)} failed:\n{out[-3000:]}")
    return seconds, (peak if measure_memory else None)


def random_batches(args):
    x, y = torch.randn(args.batch_size, 3, args.image_size, args.image_size), torch.randint(0, 2, (args.batch_size,))
    return [(x, y)] * (args.warmup + args.steps)


def train_model_only(args, compile=False, amp=False):
    """images/s of AItraining.train_one_epoch on random tensors held in memory: the compute limit."""
    torch.manual_seed(0)
    net = model.prepare_for_device(model.build_model(pretrained=False), CPU)
    times = []
    AItraining.train_one_epoch(torch.compile(net) if compile else net, timed(random_batches(args), times),
                               model.make_criterion(), model.make_optimizer(net), CPU, amp, "model only")
    return images_per_s(times, args.warmup, args.batch_size), times[1] - times[0]


def train_pipeline(args, data_dir):
    """images/s of AItraining.py's loader (prepared photos, draft decoding, workers) + train_one_epoch."""
    torch.manual_seed(0)
    net = model.prepare_for_device(model.build_model(pretrained=False), CPU)
    cfg = model.data_config(net, args.image_size)
    ds = AItraining.load_split(data_dir, "train", model.train_transform(cfg), int(args.image_size / cfg["crop_pct"]))
    sampler = RandomSampler(ds, replacement=True, num_samples=(args.warmup + args.steps) * args.batch_size)
    loader, times = AItraining.make_loader(ds, args.batch_size, sampler, args.num_workers, CPU, drop_last=True), []
    AItraining.train_one_epoch(net, timed(loader, times), model.make_criterion(), model.make_optimizer(net), CPU,
                               False, "pipeline")
    return images_per_s(times, args.warmup, args.batch_size)


def naive_loader(args, data_dir):
    """A first version's data: ImageFolder over the full-size photos with torchvision's default loader and
    transforms, loaded in the main process (num_workers=0)."""
    cfg = model.data_config(model.build_model(pretrained=False), args.image_size)
    tf = transforms.Compose([transforms.RandomResizedCrop(args.image_size), transforms.ToTensor(),
                             transforms.Normalize(cfg["mean"], cfg["std"])])
    ds = datasets.ImageFolder(os.path.join(data_dir, "train"), transform=tf)
    sampler = RandomSampler(ds, replacement=True, num_samples=(args.warmup + args.steps) * args.batch_size)
    return DataLoader(ds, batch_size=args.batch_size, sampler=sampler, num_workers=0)


def train_plain(args, loader):
    """images/s of the plainest training loop, the model in the default (contiguous) memory format."""
    torch.manual_seed(0)
    net = model.build_model(pretrained=False).train()
    criterion, optimizer, times = model.make_criterion(), model.make_optimizer(net), []
    for x, y in timed(loader, times):
        loss = criterion(net(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return images_per_s(times, args.warmup, args.batch_size)


def median_seconds(fn, n):
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def predict_latency(args, work, photo, data_dir):
    """(cold PyTorch s, cold ONNX s, warm PyTorch s, warm ONNX s) for one photo."""
    import predict
    pth, onnx = os.path.join(work, "skin_model.pth"), os.path.join(work, "skin_model.onnx")
    net = model.build_model(pretrained=False)
    model.save_checkpoint(pth, model.checkpoint_state(net, model.data_config(net, args.image_size)))
    run(script("export_onnx.py", "--model", pth, "--output", onnx, "--check-images", os.path.join(data_dir, "test")))
    cold = {}
    for path in [pth, onnx] * (args.cold_runs + 1):  # the first run of each only fills the file cache
        cold.setdefault(path, []).append(run(script("predict.py", photo, "--model", path), cwd=work)[0])
    net, meta = model.load_checkpoint(pth)
    cfg, img = model.meta_data_config(meta), model.load_image(photo)
    x = model.eval_transform(cfg)(img)
    session, _ = predict.load_onnx(onnx)
    a = model.preprocess(img, cfg)
    for _ in range(3):  # warm-up
        predict.torch_probability(net, x), predict.onnx_probability(session, a)
    return (statistics.median(cold[pth][1:]), statistics.median(cold[onnx][1:]),
            median_seconds(lambda: predict.torch_probability(net, x), args.warm_runs),
            median_seconds(lambda: predict.onnx_probability(session, a), args.warm_runs))


def many_photos_export(demo_dir, out_dir, n):
    """An export of n distinct large JPEGs: the demo photos copied under new ids, each with a different
    JPEG comment (a COM segment) so its bytes, and so its sha256, differ; decoding is the same work."""
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
        os.path.join(out_dir, "metadata.csv"), index=False)


def machine():
    cpu = platform.processor()
    if os.path.isfile("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads, "
            f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}), Python {platform.python_version()}")


def print_tables(rows):
    """rows: (measurement, result, ratio, target) -> a plain table, then the same in markdown."""
    head = ("measurement", "result", "ratio", "target")
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(4)]
    for r in [head, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))
    print("\n| " + " | ".join(head) + " |\n|" + "---|" * 4)
    for r in rows:
        print("| " + " | ".join(map(str, r)) + " |")


def ok(good):
    return "yes" if good else "NO"


def bench_training(args, small, full):
    base = pipe = 0
    for r in range(args.rounds):  # alternately, so that a burst of other work hits both alike
        print(f"training, round {r + 1}/{args.rounds}: model only, AItraining.py loop ...", flush=True)
        base = max(base, train_model_only(args)[0])
        pipe = max(pipe, train_pipeline(args, small))
    print("training: naive baseline ...", flush=True)
    naive = train_plain(args, naive_loader(args, full))
    print("training: model only, contiguous memory format ...", flush=True)
    plain = train_plain(args, random_batches(args))
    return base, [
        (f"train, model only ({args.image_size} px, batch {args.batch_size}, random tensors)", f"{base:.1f} img/s",
         "1.00", "reference"),
        (f"train, AItraining.py loop ({args.num_workers} workers, 256 px JPEGs)", f"{pipe:.1f} img/s",
         f"{pipe / base:.2f} of model only", f">= 0.90: {ok(pipe >= 0.9 * base)}"),
        (f"train, naive ({args.demo_photo_size} px JPEGs, 0 workers, contiguous)", f"{naive:.1f} img/s",
         f"AItraining.py {pipe / naive:.1f}x faster", f">= 3x: {ok(pipe >= 3 * naive)}"),
        ("train, model only, contiguous memory format", f"{plain:.1f} img/s", f"{plain / base:.2f} of channels_last", "")]


def bench_options(args, base):
    rows = []
    if args.compile:
        print("training: torch.compile ...", flush=True)
        fast, compile_s = train_model_only(args, compile=True)
        rows.append((f"train, model only, torch.compile (first step, compiling: {compile_s:.0f} s)", f"{fast:.1f} img/s",
                     f"{fast / base:.2f} of plain" if base else "", "AItraining.py COMPILE"))
    if args.amp:
        print("training: bf16 autocast ...", flush=True)
        bf16, _ = train_model_only(args, amp=True)
        rows.append(("train, model only, bf16 autocast", f"{bf16:.1f} img/s",
                     f"{bf16 / base:.2f} of plain" if base else "", "AItraining.py AMP"))
    return rows


def bench_memory(args, work, small):
    print("memory: one AItraining.py epoch ...", flush=True)
    _, peak = run(script("AItraining.py", "--data-dir", small, "--epochs", 1, "--no-pretrained", "--image-size",
                         args.image_size, "--batch-size", args.batch_size, "--num-workers", args.num_workers),
                  measure_memory=True, cwd=work)
    return [(f"peak memory, AItraining.py epoch ({args.image_size} px, batch {args.batch_size})",
             f"{peak / 1e9:.2f} GB", f"{peak / 6e9:.2f} of 6 GB", f"< 6 GB: {ok(peak < 6e9)}")]


def bench_predict(args, work, photo, small):
    print("prediction: export, cold and warm ...", flush=True)
    cold_pt, cold_onnx, warm_pt, warm_onnx = predict_latency(args, work, photo, small)
    return [(f"predict 1 photo, fresh process: PyTorch {cold_pt:.2f} s", f"ONNX {cold_onnx:.2f} s",
             f"ONNX {cold_pt / cold_onnx:.1f}x faster", f">= 5x: {ok(cold_pt >= 5 * cold_onnx)}"),
            (f"predict 1 photo, warm: PyTorch {warm_pt * 1e3:.1f} ms", f"ONNX {warm_onnx * 1e3:.1f} ms",
             f"ONNX {warm_pt / warm_onnx:.1f}x faster", "")]


def bench_prepare(args, work, demo):
    print(f"prepare_dataset.py: {args.n_prepare_images} photos, all cores, then one ...", flush=True)
    export = os.path.join(work, f"export_{args.n_prepare_images}")
    if not os.path.isdir(export):
        many_photos_export(demo, export, args.n_prepare_images)
    seconds, peak = {}, 0
    for workers in [os.cpu_count(), 1]:
        seconds[workers], mem = run(script("prepare_dataset.py", "--images-dir", export, "--metadata-csv",
                                           os.path.join(export, "metadata.csv"), "--dataset-dir",
                                           os.path.join(work, "prepared"), "--n-per-class", args.n_prepare_images,
                                           "--workers", workers), measure_memory=True)
        peak = max(peak, mem)
    n, all_cores, one = args.n_prepare_images, seconds[os.cpu_count()], seconds[1]
    return [(f"prepare_dataset.py, {n} photos: 1 worker {n / one:.1f} img/s", f"{os.cpu_count()} workers "
             f"{n / all_cores:.1f} img/s", f"{one / all_cores:.2f}x the speed of 1", ""),
            ("peak memory, prepare_dataset.py", f"{peak / 1e9:.2f} GB", f"{peak / 1e9:.2f} of 1 GB",
             f"< 1 GB: {ok(peak < 1e9)}")]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    args = model.add_constant_flags(parser, globals()).parse_args()
    work = args.work_dir or tempfile.mkdtemp(prefix="bench-")
    os.makedirs(work, exist_ok=True)
    demo, small, full = (os.path.join(work, d) for d in ("demo", "dataset_256", "dataset_full"))
    load, started = os.getloadavg()[0], time.time()
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(work, "inductor")  # compile afresh (kept in a WORK_DIR)
    print(f"machine: {machine()}\nload average at start: {load:.2f}; work dir {work}", flush=True)
    rows, base = [], None
    try:
        if not os.path.isdir(small):
            run(script("prepare_dataset.py", "--demo", "--demo-dir", demo, "--demo-photo-size", args.demo_photo_size,
                       "--dataset-dir", small, "--resize-to", 256))
        if args.train:
            if not os.path.isdir(full):
                run(script("prepare_dataset.py", "--metadata-csv", os.path.join(demo, "metadata.csv"),
                           "--images-dir", demo, "--dataset-dir", full, "--resize-to", "none"))
            base, more = bench_training(args, small, full)
            rows += more
        rows += bench_options(args, base)
        rows += bench_memory(args, work, small) if args.memory else []
        rows += bench_predict(args, work, os.path.join(demo, "unseen", "malignant_1.jpg"), small) if args.predict else []
        rows += bench_prepare(args, work, demo) if args.prepare else []
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\nmachine: {machine()}\nload average (1 min): {load:.2f} at the start, {os.getloadavg()[0]:.2f} "
          f"at the end; bench took {time.time() - started:.0f} s\n")
    print_tables(rows)


if __name__ == "__main__":
    main()
