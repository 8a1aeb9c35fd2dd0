"""The steps of a training run: one epoch of training, one pass over the validation split (gathered from every
process under torchrun), the learning-rate schedule, and the training state a resume checkpoint keeps."""

import json
import math

import numpy as np
from tqdm import tqdm

from skinlesion import dataset, devices, photos, shapes, shards
from skinlesion.cli import die, in_range

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


def open_splits(args, train, val, cfg, device, rank, world):
    """(the train split, the val split, where their photos are kept, in words) for a run (args: AItraining.py's
    data_dir, cache_gb, num_workers): train, val are (photos, labels); the training photos kept at the
    evaluation's shorter side (the device crops and augments them), the validation photos as the evaluation crops
    them; a uint8 cache on the device when both fit in cache_gb, else streamed by workers (from folders or
    shards: shards.open_split)."""
    size = cfg["input_size"][-1]
    short = photos.short_side(size, cfg["crop_pct"])
    dataset.warn_small_photos(train[0], short)
    gigabytes = 3 * (len(train[0]) * short**2 + len(val[0]) * size**2) / 1e9
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
