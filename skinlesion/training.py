"""The training data path and the steps of a training run (AItraining.py, bench.py): a split's photos decoded
once into a uint8 cache on the training device, or streamed by DataLoader workers, and augmented on the device per
batch; one epoch of training, one pass over the validation split (gathered from every process under torchrun), the
learning-rate schedule, the training state a resume checkpoint keeps, and the run's TensorBoard log."""

import contextlib
import json
import math
import os
import threading

import numpy as np
from tqdm import tqdm

from skinlesion import dataset, devices, folders, photos, shapes, shards
from skinlesion.cli import die, in_range, printable
from skinlesion.photos import normalise_batch, photo_loader

NUMBER = shapes.simple(in_range, "a finite number")
RESUME_STATE = shapes.record(dict(  # what AItraining.py --resume reads besides the weights and meta
    optimizer=shapes.record({}, others=True), schedule=shapes.record({}, others=True), stopped_early=shapes.BOOLEAN,
    bad_epochs=shapes.whole(0, 10**6), best=shapes.list_of(NUMBER, 2), history=shapes.text(10**8)))  # fmt: skip
EPOCH_LOG = shapes.list_of(
    shapes.record(
        dict.fromkeys(  # the history: each epoch's numbers (curves, TensorBoard)
            ("epoch", "roc_auc", "val_loss", "train_loss", "train_accuracy", "lr", "seconds"), NUMBER
        ),
        others=True,
    )
)
RESUME_KEYS = ["optimizer", "schedule", "best", "bad_epochs", "stopped_early", "history"]


def resume_fault(state):
    """What is wrong with a resume checkpoint's training state (optimizer, schedule, best, history...), or None."""
    fault = shapes.fault(RESUME_STATE, "training state", {k: state[k] for k in RESUME_KEYS})
    try:
        return fault or shapes.fault(EPOCH_LOG, "history", json.loads(state["history"]))
    except RecursionError:
        return "its history is JSON nested too deeply to read"
    except ValueError:
        return "its history is not JSON"


def lr_factor(step, total, warmup, schedule):
    """Share of the peak learning rate at a step: linear warm-up over warmup * total steps, then cosine to 0
    or constant."""
    warm = round(warmup * total)
    if step < warm:
        return (step + 1) / warm
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))
    return 1.0


def train_one_epoch(net, epoch_batches, criterion, optimizer, scheduler, amp, desc, steps=None):
    """Train on (x, y) batches already normalised on the device; (mean loss, accuracy). Dies at once when
    the loss stops being a number: the checkpoints keep the last good epoch."""
    import torch

    net.train()
    total_loss, correct, seen = 0.0, 0, 0
    for step, (x, y) in enumerate(tqdm(epoch_batches, desc=desc, total=steps, leave=False, disable=None)):
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            logits = net(x)
            loss = criterion(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        value = loss.item()
        if not math.isfinite(value):
            die(
                f"training diverged: the loss became {value} in {desc}, step {step + 1}, at learning rate "
                f"{optimizer.param_groups[0]['lr']:.3g}; lower --lr. The checkpoints keep the last good epoch"
            )
        total_loss += value * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        seen += len(y)
    return total_loss / seen, correct / seen


def predict_split(net, val_batches, amp, world):
    """(class indices, logits, mean loss) over (index, x, y) batches of a split, gathered from every process."""
    import torch

    net.eval()
    indices, labels, logits, losses = [], [], [], []
    with torch.inference_mode():
        for i, x, y in tqdm(val_batches, desc="validate", leave=False, disable=None):
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
                out = net(x).float()
            losses += torch.nn.functional.cross_entropy(out, y, reduction="none").tolist()
            logits += out.double().cpu().numpy().tolist()
            labels += y.tolist()
            indices += list(i)
    labels, logits, losses = devices.gathered(world, indices, labels, logits, losses)
    if not np.isfinite(logits).all():
        die(
            "training diverged: the model gives non-finite outputs on the validation split; lower --lr. "
            "The checkpoints keep the last good epoch"
        )
    return np.array(labels), np.array(logits), float(np.mean(losses))


def cache_gigabytes(n_train, n_val, cfg):
    """The size of the uint8 cache of n_train training photos (kept at the evaluation's shorter side) and n_val
    validation photos (as the evaluation crops them), in GB: what CACHE_GB is compared with."""
    size = cfg["input_size"][-1]
    short = photos.short_side(size, cfg["crop_pct"])
    return 3 * (n_train * short**2 + n_val * size**2) / 1e9


def open_splits(args, train, val, cfg, device, rank, world):
    """(the train split, the val split, where their photos are kept, in words) for a run (args: AItraining.py's
    data_dir, cache_gb, num_workers): train, val are (photos, labels); the training photos kept at the
    evaluation's shorter side (the device crops and augments them), the validation photos as the evaluation crops
    them; a uint8 cache on the device when both fit in cache_gb, else streamed by workers (from folders or
    shards: shards.open_split)."""
    size = cfg["input_size"][-1]
    short = photos.short_side(size, cfg["crop_pct"])
    dataset.warn_small_photos(train[0], short)
    gigabytes = cache_gigabytes(len(train[0]), len(val[0]), cfg)
    cached = gigabytes <= args.cache_gb
    where = f"cached on the device ({gigabytes:.2f} GB)" if cached else f"streamed ({gigabytes:.2f} GB > CACHE_GB)"
    splits = []
    for name, (paths, labels), side, crop in (("train", train, short, 1.0), ("val", val, size, cfg["crop_pct"])):
        shown, caching = photos.Photos(paths, side, crop, cfg["interpolation"]), f"caching {name}"
        found = shards.open_split(
            args.data_dir, name, shown, labels, cached, args.num_workers, device, caching, rank, world
        )
        splits.append(found)
    return *splits, where


def checked_crops(batches, paths):
    """The uint8 crops of (indices, (crops, whys)) batches of Photos; raises OSError at a photo that cannot be
    read, naming it."""
    for indices, (x, whys) in batches:
        for i, why in zip(indices, whys):
            if why:
                raise OSError(f"{printable(paths[i])} is {why}; delete it or re-run prepare_dataset.py")
        yield x


class Split:
    """A split's uint8 crops on the training device: decoded once into a cache (when cached) or streamed by
    persistent DataLoader workers every pass. batches(order) gives the same tensors either way."""

    def __init__(self, photos, labels, cached, num_workers, device, desc):
        import torch
        from tqdm import tqdm

        self.paths, self.device, self.order = photos.paths, device, []
        self.labels = torch.as_tensor(labels, device=device)
        self.loader = photo_loader(photos, self.order, num_workers, device)
        self.cache = None
        if cached:
            self.order[:] = [list(range(i, min(i + 64, len(photos)))) for i in range(0, len(photos), 64)]
            crops = checked_crops(zip(self.order, self.loader), self.paths)
            progress = tqdm(crops, desc=desc, total=len(self.order), leave=False, disable=None)
            self.cache = torch.cat([x.to(device) for x in progress])
            self.loader = None  # decoded once: its workers need not wait for the rest of the run

    def batches(self, order):
        """(indices, uint8 crops, labels) for each list of indices in order."""
        import torch

        order = list(order)
        self.order[:] = order
        if self.cache is not None:
            crops = (self.cache[torch.tensor(b, device=self.device)] for b in order)
        else:
            crops = checked_crops(zip(order, self.loader), self.paths)
        for b, x in zip(order, crops):
            yield b, x.to(self.device, non_blocking=True), self.labels[b]

    def epoch(self, batch_size, generator, rank=0, world=1, order=None):
        """(indices, uint8 crops, labels) of this process's batches of one epoch: a permutation of the photos
        from generator (or the given order), this process's share of it in full batches (all of it when it
        holds fewer than two batches' worth, as a tiny data set does); the same number of steps everywhere."""
        import torch

        if order is None:
            order = torch.randperm(len(self.paths), generator=generator)
        else:
            order = torch.as_tensor(order)
        steps = len(order) // world // batch_size
        order = order[rank::world].tolist()
        if len(order) > batch_size:
            return self.batches([order[i * batch_size : (i + 1) * batch_size] for i in range(steps)])
        return self.batches([order])

    def own_batches(self, rank, world, batch_size):
        """(indices, uint8 crops, labels) of this process's share of the photos, in order (validation)."""
        share = list(range(rank, len(self.paths), world))
        return self.batches([share[i : i + batch_size] for i in range(0, len(share), batch_size)])


def train_batches(split, batch_size, cfg, generator, generator_device, rank=0, world=1, order=None):
    """One epoch of augmented, normalised training batches (x, y) of a Split (or a shards.Stream): this
    process's batches of the epoch (Split.epoch), augmented on the device with generator_device."""
    for _, x, y in split.epoch(batch_size, generator, rank, world, order):
        yield normalise_batch(augment(x, generator_device, cfg["input_size"][-1]), cfg), y


def augment(x, generator, size):
    """Per-sample augmentation of a uint8 batch (B, 3, M, M) on its device: floats in [0, 1], (B, 3, size, size).
    Random resized crop (50-100% of the area, aspect 3/4 to 4/3, anywhere), any rotation and both flips as one
    affine_grid + grid_sample (bilinear, reflection at the borders), then brightness, contrast and saturation
    each times 0.8-1.2."""
    import torch
    import torch.nn.functional as F

    def uniform(low, high):
        return torch.rand(len(x), generator=generator, device=x.device) * (high - low) + low

    def sign():
        return torch.where(uniform(0, 1) < 0.5, -1.0, 1.0)

    def factor():
        return uniform(0.8, 1.2)[:, None, None, None]

    def grey(x):
        weights = torch.tensor([0.299, 0.587, 0.114], device=x.device)[:, None, None]
        return (x * weights).sum(1, keepdim=True)

    area, aspect = uniform(0.5, 1.0), torch.exp(uniform(math.log(3 / 4), math.log(4 / 3)))
    sx, sy = (area * aspect).sqrt().clamp(max=1), (area / aspect).sqrt().clamp(max=1)  # half-sizes in [-1, 1] units
    tx, ty = (1 - sx) * uniform(-1, 1), (1 - sy) * uniform(-1, 1)  # the crop's centre, anywhere it fits
    sx, sy = sx * sign(), sy * sign()  # flips
    angle = uniform(0, 2 * math.pi)
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack([torch.stack([cos * sx, -sin * sy, tx], 1), torch.stack([sin * sx, cos * sy, ty], 1)], 1)
    grid = F.affine_grid(theta, [len(x), 3, size, size], align_corners=False)
    x = F.grid_sample(x.float() / 255, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    x = (x * factor()).clamp(0, 1)  # brightness
    mean = grey(x).mean((2, 3), keepdim=True)
    x = ((x - mean) * factor() + mean).clamp(0, 1)  # contrast
    luma = grey(x)
    return (luma + (x - luma) * factor()).clamp(0, 1)  # saturation


class TensorBoardLog:
    """The run's TensorBoard log, log_dir/run (log_dir made and marked as ours if missing): each epoch's numbers,
    flushed and recorded in log_dir's ledger at once (what make clean may remove). A write that fails there (a full
    disk) is one line naming the folder and --log-dir. TensorBoard writes from a thread of its own, whose error
    comes back at the next flush, where it is said: that thread's traceback is not printed as well."""

    def __init__(self, log_dir, run, start_epoch):
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir, self.run, self.folder = log_dir, run, os.path.join(log_dir, run)
        self.previous_hook, threading.excepthook = threading.excepthook, self.quiet_writer_thread
        with self.full_disk_said():
            folders.made_folder(log_dir, "AItraining.py", "log folder")
            self.writer = SummaryWriter(self.folder, purge_step=start_epoch)

    def add(self, numbers, epoch):
        with self.full_disk_said():
            for key, value in numbers.items():
                self.writer.add_scalar(key, value, epoch)
            self.writer.flush()
            folders.record_files(self.log_dir, self.run, "training log")

    def close(self):
        with self.full_disk_said():
            self.writer.close()
            folders.record_files(self.log_dir, self.run, "training log")
        threading.excepthook = self.previous_hook

    def quiet_writer_thread(self, hook_args):
        writers = type(hook_args.thread).__module__.startswith("tensorboard.")
        if not (writers and isinstance(hook_args.exc_value, OSError)):
            self.previous_hook(hook_args)

    @contextlib.contextmanager
    def full_disk_said(self):
        try:
            yield
        except OSError as e:
            reason = f"{printable(e.filename)}: {e.strerror}" if e.filename and e.strerror else e.strerror or str(e)
            die(
                f"could not write the TensorBoard log {printable(self.folder)} ({reason}); free some disk space or "
                "pass another --log-dir"
            )
