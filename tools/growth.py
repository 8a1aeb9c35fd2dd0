"""How the costs grow with the number of photos (bench.py --growth 1000 10000 50000): at each count, an export of
that many distinct small synthetic photos is prepared as folders and as shards (prepare_dataset.py's time and
peak memory, the size on disk), and training is set up on each as AItraining.py sets it up (the photos cached
on the device when they fit CACHE_GB, else streamed) and timed for a few steps (its setup time, images per
second and peak memory, in a process of its own)."""

import itertools
import json
import os
import sys
import time

import measure

HEAD = ("photos", "data", "prepare", "prepare peak", "on disk", "train setup", "train", "train peak", "photos kept")


def folder_bytes(folder, skip=None):
    """The bytes of the files under folder (not under its sub-folder skip)."""
    total = 0
    for root, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if os.path.join(root, d) != skip]
        total += sum(os.path.getsize(os.path.join(root, name)) for name in names)
    return total


def probe(data_dir, image_size, batch_size, warmup, steps, num_workers, cache_gb):
    """Print (JSON) what AItraining.py's data path costs on data_dir: the seconds to list the photos and fill
    the cache (when they fit cache_gb), and the training images/s over steps steps after warmup."""
    import torch

    import model
    from skinlesion import dataset, devices, photos, splits, training

    device, start = devices.pick_device(), time.perf_counter()
    classes = dataset.classes_of(dataset.read_manifest(data_dir))[0]
    train_paths, train_y = splits.split_photos(data_dir, "train", classes)
    val_paths, val_y = splits.split_photos(data_dir, "val", classes)
    net = model.prepare_for_device(model.build_model(pretrained=False, num_classes=len(classes))[0], device)
    cfg = model.data_config(net, image_size)
    short = photos.short_side(image_size, cfg["crop_pct"])
    gigabytes = training.cache_gigabytes(len(train_paths), len(val_paths), cfg)  # as AItraining.py
    cached = gigabytes <= cache_gb
    train_crops = photos.Photos(train_paths, short, 1.0, cfg["interpolation"])
    train = training.open_split(data_dir, "train", train_crops, train_y, cached, num_workers, device, "caching train")
    val_crops = photos.Photos(val_paths, image_size, cfg["crop_pct"], cfg["interpolation"])
    training.open_split(data_dir, "val", val_crops, val_y, cached, num_workers, device, "caching val")
    setup = time.perf_counter() - start
    recipe = model.RECIPES["scratch"]
    optimizer = model.make_optimizer(net, recipe["optimizer"], recipe["lr"], recipe["weight_decay"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    g, g_device = torch.Generator().manual_seed(0), torch.Generator(device=device).manual_seed(0)
    epoch = itertools.islice(training.train_batches(train, batch_size, cfg, g, g_device), warmup + steps)
    times = []
    training.train_one_epoch(net, measure.timed(epoch, times), model.make_criterion(0.1), optimizer, scheduler,
                             False, "probe")  # fmt: skip
    speed = measure.per_second(times, warmup, batch_size)
    print(json.dumps(dict(setup=setup, per_second=speed, cached=cached, gigabytes=gigabytes)))


def table(args, work, demo, here, env, cache_gb):
    """The growth rows for each count in args.growth, folders and shards; demo: an export of small photos, here:
    the project's folder."""
    rows = []
    for n in args.growth:
        export = os.path.join(work, "growth", f"export_{n}")
        if not os.path.isdir(export):
            print(f"growth: an export of {n} distinct photos ...", flush=True)
            measure.distinct_copies_export(demo, export, n)
        for kind in ("folders", "shards"):
            out = os.path.join(work, "growth", f"dataset_{n}_{kind}")
            options = ["--metadata-csv", os.path.join(export, "metadata.csv"), "--images-dir", export]
            options += ["--dataset-dir", out, "--n-per-class", n, "--min-kept", 0]
            if kind == "shards":
                options += ["--shards"]
            print(f"growth: {n} photos, prepare_dataset.py ({kind}) ...", flush=True)
            cmd = [sys.executable, os.path.join(here, "prepare_dataset.py"), *map(str, options)]
            seconds, peak = measure.run(cmd, True, env)
            data = out
            disk = folder_bytes(out, skip=os.path.join(out, "shards"))
            if kind == "shards":
                data, disk = os.path.join(out, "shards"), folder_bytes(os.path.join(out, "shards"))
            print(f"growth: {n} photos, training from {kind} ...", flush=True)
            numbers = (
                f"{args.image_size}, {args.batch_size}, {args.warmup}, {args.steps}, {args.num_workers}, {cache_gb}"
            )
            code = f"import growth; growth.probe({os.path.abspath(data)!r}, {numbers})"
            tools = os.path.join(here, "tools")  # the child runs there, so that `import growth` finds this file
            train_seconds, train_peak, result = probe_run([sys.executable, "-c", code], env, tools)
            kept = "cached" if result["cached"] else "streamed"
            rows.append(
                (
                    f"{n:,}",
                    kind,
                    f"{seconds:.0f} s ({n / seconds:.0f} photos/s)",
                    f"{peak / 1e9:.2f} GB",
                    f"{disk / 1e6:.1f} MB",
                    f"{result['setup']:.0f} s",
                    f"{result['per_second']:.1f} img/s",
                    f"{train_peak / 1e9:.2f} GB",
                    f"{kept} ({result['gigabytes']:.2f} GB)",
                )
            )
            print("  " + " | ".join(rows[-1]), flush=True)
    return rows


def probe_run(cmd, env, cwd):
    """(seconds, peak memory, the JSON line it printed last) of a probe run in its own process, in folder cwd."""
    import subprocess
    import tempfile

    with tempfile.TemporaryFile("w+") as out:
        start, peak = time.perf_counter(), 0
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, text=True, env={**os.environ, **env}, cwd=cwd
        )
        while proc.poll() is None:
            peak = max(peak, measure.tree_pss(proc.pid))
            time.sleep(0.2)
        out.seek(0)
        text = out.read()
    if proc.returncode:
        raise RuntimeError(f"the training probe failed:\n{text[-3000:]}")
    return time.perf_counter() - start, peak, json.loads(text.strip().splitlines()[-1])
