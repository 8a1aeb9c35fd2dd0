"""The training data path and the steps of a training run (AItraining.py, bench.py): a split's photos decoded
once into a uint8 cache on the training device, or streamed by DataLoader workers, and augmented on the device per
batch; one epoch of training (and whether it fits in memory), one pass over the validation split (gathered from
every process under torchrun), the learning-rate schedule, and the run's TensorBoard log. (What a resume checkpoint
keeps: resume.py.)"""

import contextlib
import math
import os
import re
import threading
from types import SimpleNamespace

import numpy as np
from tqdm import tqdm

from skinlesion import dataset, devices, folders, metrics, photos, shards, splits
from skinlesion.messages import UserError, printable, warn
from skinlesion.photos import normalise_batch, photo_loader

OUT_OF_MEMORY = re.compile(r"out of memory|can't allocate memory|DefaultCPUAllocator", re.I)  # the allocators' words


def validation_photos(data_dir, classes, folds):
    """(photo paths, class indices) of the validation split, which chooses the best epoch, the calibration, the
    threshold and the familiarity limit; none where the dataset has no such split and the run cuts folds (folds
    None: the count decides), and with one split (folds 1) it raises UserError naming the flags that help."""
    if splits.has_split(data_dir, "val"):
        return splits.split_photos(data_dir, "val", classes)
    if folds == 1:
        raise UserError(
            f"{printable(data_dir)} has no validation split, which training with one split needs to choose the best "
            "epoch, the calibration and the threshold on; re-run prepare_dataset.py with --val-fraction 0.15 (its "
            "default), or pass --folds 5 (cross-validated folds of the training photos)"
        )
    return [], np.array([], dtype=int)


def step_parts(run, progress, criterion, optimizer, steps, epochs=None, stage=""):
    """What each step of a stage of a run uses (run: AItraining.py's args, net, device, rank, world, log): the loss,
    the optimizer, its learning-rate schedule (lr_factor over args.epochs: a refit of fewer epochs follows the folds'
    schedule), the network that trains (compiled, under DDP), the TensorBoard writer (rank 0; its steps count on
    over the stages); a resumed run's optimiser and schedule state put back."""
    import torch

    args, total = run.args, run.args.epochs * steps
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, args.warmup, args.schedule))
    if progress["epoch"]:
        optimizer.load_state_dict(progress["optimizer"])
        schedule.load_state_dict(progress["schedule"])
        where = f"{stage} " if stage else ""
        best = f" (best ROC-AUC so far {progress['best'][0]:.3f})" if progress["best"][0] >= 0 else ""
        run.log(f"resuming from {printable(args.resume_from)} {where}after epoch {progress['epoch']} of "
                f"{epochs or args.epochs}{best}")  # fmt: skip
    net = torch.compile(run.net) if args.compile else run.net
    if run.world > 1:
        ids = [run.device.index] if run.device.type == "cuda" else None
        net = torch.nn.parallel.DistributedDataParallel(net, device_ids=ids)
    writer = None
    if run.rank == 0:
        first = progress["stage"] * args.epochs + progress["epoch"] + 1
        writer = TensorBoardLog(args.log_dir, args.run, first)
    return SimpleNamespace(net=net, criterion=criterion, optimizer=optimizer, schedule=schedule, writer=writer)


def epoch_line(found, seconds, improved, stage=""):
    """An epoch's line: losses, accuracy, ROC-AUC (no threshold), its time, and a star where it is the best so far;
    prefixed by its stage (a fold, the refit: which has no validation)."""
    said = f"{stage} epoch {found['epoch']:3d} | train loss {found['train_loss']:.4f} acc {found['train_accuracy']:.3f}"
    if "val_loss" in found:
        types = f" types {found['type_balanced_accuracy']:.3f}" if "type_balanced_accuracy" in found else ""
        said += f" | val loss {found['val_loss']:.4f} log-loss {found['val_log_loss']:.4f} AUC {found['roc_auc']:.3f}"
        said += types
    return said.strip() + f" | {seconds:.0f}s" + (" *" if improved and "val_loss" in found else "")


def report(output, card_path, final):
    """Say how good the kept epoch (or what the folds deployed) is, and warn when it is at chance or its threshold
    useless (final: the model file's meta)."""
    from skinlesion import card

    said, photos, where = card.chosen_on(final)
    m, (low, high) = final["val_metrics"], final["val_auc_ci95"]
    op, fitted = final["operating_point"], final["calibration"]
    kept = card.fold_text(final["folds"]) if final.get("folds") else f"best epoch {final['epoch']}"
    print(f"{kept}: {said} ROC-AUC {m['roc_auc']:.3f} (95% CI {low:.3f}-{high:.3f}) -> {printable(output)}")
    if fitted and fitted["method"] == "none":
        print("calibration: none (neither temperature nor Platt scaling lowered the cross-validated log-loss)")
    elif fitted:
        print(
            f"calibration: {fitted['method']} scaling ({said} log-loss {fitted['val_log_loss_before']:.3f} -> "
            f"{fitted['val_log_loss_after']:.3f}, ECE {fitted['val_ece_before']:.3f} -> {fitted['val_ece_after']:.3f})"
        )
    print(f"operating point: threshold {op['threshold']:.3f}, {metrics.operating_point_text(op, photos)}")
    print(f"model card: {printable(card_path)}")
    if final["at_chance"]:
        warn(
            f"this model cannot be told from chance: the 95% interval of its {said} ROC-AUC ({low:.3f}-"
            f"{high:.3f}) includes 0.5. Do not use its predictions. What helps: ImageNet weights (--weights-file, "
            "see README), more photos (prepare_dataset.py --n-per-class), more --epochs"
        )
    caution = metrics.operating_point_warning(op)
    if caution:
        warn(f"{caution} on {where}; lower or raise --target-sensitivity, or get more photos")


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
        try:
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
                logits = net(x)
                loss = criterion(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        except RuntimeError as e:  # torch.OutOfMemoryError on a GPU, the CPU allocator's RuntimeError
            if not OUT_OF_MEMORY.search(str(e)):
                raise
            said = str(e).strip().splitlines()[0][:160]
            advice = memory_advice(x.shape[-1], len(x))
            raise UserError(
                f"{x.device} ran out of memory training at {x.shape[-1]} px with batch {len(x)} ({said}); {advice}"
            ) from None
        optimizer.step()
        scheduler.step()
        value = loss.item()
        if not math.isfinite(value):
            raise UserError(
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
        raise UserError(
            "training diverged: the model gives non-finite outputs on the validation split; lower --lr. "
            "The checkpoints keep the last good epoch"
        )
    return np.array(labels), np.array(logits), float(np.mean(losses))


def memory_advice(size, batch, fits=None):
    """Which flag to lower when a training step at size px with batch photos does not fit (fits: the batch that
    would, where known)."""
    if fits is None:
        fits = batch // 4
    if fits >= 1:
        return f"lower --batch-size to {fits} (or --image-size)"
    return "lower --image-size (or --batch-size)" if batch > 1 else "lower --image-size"


def training_gigabytes(net, size, batch):
    """The memory one training step of batch photos at size px needs, estimated, in GB: the tensors autograd keeps
    for the backward pass, counted on two photos at 64 px through a copy of net (saved_tensors_hooks) and
    scaled by the pixels and the batch, plus the weights, their gradients and the optimiser's two moments. None
    where the copy cannot take that size (an architecture made for one size)."""
    import copy

    import torch

    twin = copy.deepcopy(getattr(net, "module", net)).cpu().float().train()
    weights = {id(p) for p in twin.parameters()}
    probe, saved = 64, []  # two photos: BatchNorm in training needs more than one value per channel

    def pack(tensor):
        if id(tensor) not in weights:
            saved.append(tensor.numel() * tensor.element_size())
        return tensor

    try:
        with torch.random.fork_rng(devices=[]), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            twin(torch.zeros(2, 3, probe, probe))
    except (RuntimeError, ValueError):
        return None
    return (sum(saved) / 2 * batch * (size / probe) ** 2 + 16 * sum(p.numel() for p in twin.parameters())) / 1e9


def free_gigabytes(device):
    """The memory free for training on device in GB (a GPU's own; the CPU's MemAvailable), or None where unknown."""
    import torch

    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] / 1e9
    if device.type != "cpu" or not os.path.isfile("/proc/meminfo"):
        return None
    with open("/proc/meminfo", encoding="ascii") as f:
        found = re.search(r"^MemAvailable:\s+(\d+) kB", f.read(1 << 16), re.M)
    return int(found[1]) * 1024 / 1e9 if found else None


def check_memory(net, size, batch, device, processes=1):
    """Before the photos are cached: raise UserError when a training step of batch photos at size px would not
    fit in the device's free memory (processes on one CPU share it), naming the flag to lower."""
    need, free = training_gigabytes(net, size, batch), free_gigabytes(device)
    if need is None or free is None:
        return
    need *= processes if device.type == "cpu" else 1
    if need > free:
        fits = int(batch * free / need)
        raise UserError(
            f"training at --image-size {size} with batch {batch} needs about {need:.1f} GB of memory, {device} has "
            f"{free:.1f} GB free; {memory_advice(size, batch, fits)}"
        )


def cache_gigabytes(n_train, n_val, cfg):
    """The size of the uint8 cache of n_train training photos (kept at the evaluation's shorter side) and n_val
    validation photos (as the evaluation crops them), in GB: what CACHE_GB is compared with."""
    size = cfg["input_size"][-1]
    short = photos.short_side(size, cfg["crop_pct"])
    return 3 * (n_train * short**2 + n_val * size**2) / 1e9


def open_splits(args, train, val, cfg, device, rank, world, pooled=False, blobs=None):
    """(the train split, the val split, where their photos are kept, in words) for a run (args: AItraining.py's
    data_dir, cache_gb, num_workers, folds): train, val are (photos, labels); the training photos kept at the
    evaluation's shorter side (the device crops and augments them), the validation photos as the evaluation crops
    them; a uint8 cache on the device when both fit in cache_gb, else streamed by workers (from folders or
    shards: open_split). pooled: train and val are the same photos (train plus validation, cut into folds:
    folds.open_run), read from blobs where they are shards."""
    size = cfg["input_size"][-1]
    short = photos.short_side(size, cfg["crop_pct"])
    dataset.warn_small_photos(train[0], short)
    gigabytes = cache_gigabytes(len(train[0]), len(val[0]), cfg)
    cached = gigabytes <= args.cache_gb
    where = f"cached on the device ({gigabytes:.2f} GB)" if cached else f"streamed ({gigabytes:.2f} GB > CACHE_GB)"
    opened = []
    for name, (paths, labels), side, crop in (("train", train, short, 1.0), ("val", val, size, cfg["crop_pct"])):
        shown, caching = photos.Photos(paths, side, crop, cfg["interpolation"], blobs), f"caching {name}"
        if pooled:
            opened.append(Split(shown, labels, cached, args.num_workers, device, caching))
        else:
            opened.append(open_split(args.data_dir, name, shown, labels, cached, args.num_workers, device,
                                     caching, rank, world))  # fmt: skip
    return *opened, where


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

    def own_batches(self, rank, world, batch_size, indices=None):
        """(indices, uint8 crops, labels) of this process's share of the photos (or of those at indices), in order
        (validation)."""
        indices = range(len(self.paths)) if indices is None else list(indices)
        share = list(indices[rank::world])
        return self.batches([share[i : i + batch_size] for i in range(0, len(share), batch_size)])


def open_split(data_dir, split, crops, labels, cached, num_workers, device, desc, rank=0, world=1):
    """A split to train or validate on: a Split of a folder's photos, or of shards read whole when cached; a
    shards.Stream of this process's shards when not."""
    if not splits.is_shards(data_dir):
        return Split(crops, labels, cached, num_workers, device, desc)
    if not cached:
        return shards.Stream(data_dir, split, crops, labels, num_workers, device, rank, world)
    crops.blobs = splits.read_blobs(data_dir, split)
    return Split(crops, labels, cached, num_workers, device, desc)


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
            raise UserError(
                f"could not write the TensorBoard log {printable(self.folder)} ({reason}); free some disk space or "
                "pass another --log-dir"
            ) from None
