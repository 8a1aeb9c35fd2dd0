"""
Train the benign/malignant classifier on dataset/train, validate on dataset/val every epoch, and keep the
best epoch (by validation ROC-AUC) in skin_model.pth.

    python AItraining.py                       # defaults below
    python AItraining.py --epochs 5 --image-size 128 --no-pretrained
    python AItraining.py --resume              # continue an interrupted run from skin_model_last.pth
    torchrun --nproc_per_node=2 AItraining.py  # several processes / GPUs / machines (DDP)

Writes skin_model.pth (best epoch, with the decision threshold chosen on validation for
TARGET_SENSITIVITY), skin_model_last.pth (latest epoch, for --resume), training_curves.png and
TensorBoard logs under runs/ (tensorboard --logdir runs).
"""
import os

# Idle OpenMP threads sleep at once instead of spinning (set before torch loads OpenMP). Measured on 2 CPU
# cores (bench.py): when other programs keep a core busy, spinning made training 1.5x (one busy program) to
# 3-4x (three) slower; on an otherwise idle machine spinning is ~15-25% faster. The robust choice is the
# default; for a dedicated machine run `OMP_WAIT_POLICY= python AItraining.py` (empty: OpenMP's own default).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import functools
import hashlib
import json
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler
from torchvision.datasets import ImageFolder
from tqdm import tqdm

import model

# -----------------------------------------------------------------------------
DATA_DIR = "dataset"  # prepared by prepare_dataset.py: DATA_DIR/<train|val>/<benign|malignant>/
OUTPUT = "skin_model.pth"  # best epoch by validation ROC-AUC
RESUME_FILE = "skin_model_last.pth"  # latest epoch, weights + optimiser, for --resume
RESUME = False  # True: continue from RESUME_FILE
EPOCHS = 20  # maximum number of epochs
PATIENCE = 5  # stop after this many epochs without a better validation ROC-AUC (0 = never stop early)
BATCH_SIZE = 32  # images per step (per process under torchrun)
LR = model.LR  # Adam learning rate (1e-4)
IMAGE_SIZE = 224  # network input in pixels (224 = ImageNet; 128 trains ~3x faster)
PRETRAINED = True  # start from ImageNet weights (downloaded by timm); False = random init
WEIGHTS_FILE = None  # local ImageNet weights file (offline), e.g. "efficientnet_b0.safetensors"
TARGET_SENSITIVITY = 0.90  # threshold chosen on validation to catch this share of malignant lesions; 0 = argmax (0.5)
NUM_WORKERS = 2  # data-loading processes (0 = load in the main process)
SEED = 42  # same seed, data and device: same result
AMP = False  # bfloat16 autocast (CPU and GPU)
COMPILE = False  # torch.compile the model
LOG_DIR = "runs"  # TensorBoard logs
# -----------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    return model.add_constant_flags(parser, globals()).parse_args(argv)


def setup_distributed():
    """(rank, world_size, device). Under torchrun: NCCL on GPUs, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world == 1:
        return 0, 1, model.pick_device()
    use_cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if use_cuda else "gloo")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    return dist.get_rank(), world, device


def read_image(path, min_side=None):
    """model.load_image, naming the file if it cannot be read (a DataLoader worker passes on only the text)."""
    try:
        return model.load_image(path, min_side)
    except Exception as e:  # truncated, not an image, decompression bomb, ...
        raise OSError(f"{path} is not a readable image ({type(e).__name__}); delete it or re-run prepare_dataset.py")


def load_split(data_dir, split, transform, min_side=None):
    """ImageFolder of data_dir/split; with min_side, JPEGs are decoded at a reduced scale that keeps the
    shorter side >= min_side (Pillow's draft mode: ~8x faster on photos not shrunk by prepare_dataset.py)."""
    path = os.path.join(data_dir, split)
    if not os.path.isdir(path):
        model.die(f"{path} not found; run 'python prepare_dataset.py' first (or --demo), "
                  f"or point --data-dir at a folder with {split}/benign and {split}/malignant")
    missing = [c for c in model.CLASSES if not os.path.isdir(os.path.join(path, c))]
    if missing:
        model.die(f"{path} has no {'/'.join(missing)} folder; it needs one folder per class: {model.CLASSES}")
    try:
        ds = ImageFolder(path, transform=transform, loader=functools.partial(read_image, min_side=min_side),
                         is_valid_file=model.is_image_file)
    except FileNotFoundError:  # torchvision: a class folder without a single image file
        empty = [c + "/" for c in model.CLASSES
                 if not any(model.is_image_file(f) for _, _, files in os.walk(os.path.join(path, c)) for f in files)]
        model.die(f"{path}: no images in {', '.join(empty)}; re-run prepare_dataset.py")
    if ds.classes != model.CLASSES:  # another folder would shift the class indices
        model.die(f"{path} has the folders {ds.classes}; it must hold only {model.CLASSES} (move the others out)")
    stray = sum(1 for root, _, files in os.walk(path) for f in files if not model.is_image_file(f))
    if stray:
        model.warn(f"{path}: {stray} file(s) that are not images skipped")
    return ds


def threshold_for_sensitivity(y_true, p_malignant, target):
    """The highest threshold whose sensitivity on (y_true, p) is at least target (0 = plain 0.5)."""
    from sklearn.metrics import roc_curve
    if not target or len(np.unique(y_true)) < 2:
        return 0.5
    fpr, tpr, thresholds = roc_curve(y_true, p_malignant, drop_intermediate=False)
    return float(min(1.0, np.max(thresholds[tpr >= target])))


def one_thread(worker_id):
    """DataLoader worker_init_fn: one torch thread per worker, so workers and the main process do not
    fight over the cores (a module-level function: it must pickle where workers are spawned, as on macOS)."""
    torch.set_num_threads(1)


def make_loader(ds, batch_size, sampler, num_workers, device, **kw):
    """The DataLoader for training and validation: num_workers processes of one thread each."""
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      pin_memory=device.type == "cuda", worker_init_fn=one_thread, **kw)


def file_sha256(path):
    if not os.path.isfile(path):
        return None
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def train_one_epoch(net, loader, criterion, optimizer, device, amp, desc):
    net.train()
    total_loss, correct, seen = 0.0, 0, 0
    for x, y in tqdm(loader, desc=desc, leave=False, disable=None):
        x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        y = y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = net(x)
            loss = criterion(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total_loss += loss.item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        seen += len(y)
    return total_loss / seen, correct / seen


@torch.inference_mode()
def predict_split(net, loader, criterion, device, amp, world):
    """(labels, P(malignant), mean loss) over the whole split, gathered from every process."""
    net.eval()
    indices, labels, probs, losses = [], [], [], []
    order = list(iter(loader.sampler)) if world > 1 else list(range(len(loader.dataset)))
    for x, y in tqdm(loader, desc="validate", leave=False, disable=None):
        x = x.to(device).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = net(x).float()
        losses += torch.nn.functional.cross_entropy(logits, y.to(device), reduction="none").tolist()
        probs += torch.softmax(logits, 1)[:, 1].tolist()
        labels += y.tolist()
    indices = order[:len(labels)]
    if world > 1:  # DistributedSampler pads with repeats: gather everything, keep each image once
        gathered = [None] * world
        dist.all_gather_object(gathered, (indices, labels, probs, losses))
        merged = {i: (l, p, s) for part in gathered for i, l, p, s in zip(*part)}
        labels, probs, losses = zip(*[merged[i] for i in sorted(merged)])
    return np.array(labels), np.array(probs), float(np.mean(losses))


def save_curves(history, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax1.plot(epochs, [h["val_loss"] for h in history], "o-", label="validation")
    ax1.set(title="Loss", xlabel="epoch", ylabel="cross-entropy")
    ax1.legend()
    for key in ["accuracy", "sensitivity", "specificity", "f1", "roc_auc"]:
        ax2.plot(epochs, [h[key] for h in history], "o-", label=key)
    ax2.set(title="Validation metrics (at the chosen threshold)", xlabel="epoch", ylim=(0, 1.02))
    ax2.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    rank, world, device = setup_distributed()
    main_process = rank == 0
    log = print if main_process else (lambda *a, **k: None)
    torch.manual_seed(args.seed)

    net = model.build_model(pretrained=args.pretrained, weights_file=args.weights_file)
    cfg = model.data_config(net, args.image_size)
    min_side = int(args.image_size / cfg["crop_pct"])  # what eval_transform resizes to (256 for 224)
    train_ds = load_split(args.data_dir, "train", model.train_transform(cfg), min_side)
    val_ds = load_split(args.data_dir, "val", model.eval_transform(cfg), min_side)
    log(f"train: {len(train_ds)} images {dict(zip(model.CLASSES, np.bincount(train_ds.targets).tolist()))}, "
        f"val: {len(val_ds)} images, device: {device}, processes: {world}, image size {args.image_size}")

    net = model.prepare_for_device(net, device)
    criterion = model.make_criterion()
    optimizer = model.make_optimizer(net, lr=args.lr)
    start_epoch, best_auc, bad_epochs, history = 1, -1.0, 0, []
    if args.resume:
        if not os.path.isfile(args.resume_file):
            model.die(f"--resume: {args.resume_file} not found; start a new run without --resume")
        state = model.read_checkpoint(args.resume_file)
        if any(key not in state for key in ("optimizer", "best_auc", "bad_epochs", "history")):
            model.die(f"--resume: {args.resume_file} has no optimiser state; resume from the {RESUME_FILE} "
                      f"a run writes (--resume-file), not from {OUTPUT}")
        if state["meta"].get("image_size") != args.image_size:
            model.die(f"--resume: {args.resume_file} was trained at image size {state['meta'].get('image_size')}; "
                      f"pass --image-size {state['meta'].get('image_size')}")
        model.load_weights(net, state, args.resume_file)
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, best_auc, bad_epochs = state["meta"]["epoch"] + 1, state["best_auc"], state["bad_epochs"]
        history = json.loads(state["history"])
        log(f"resuming from {args.resume_file} after epoch {state['meta']['epoch']} (best ROC-AUC so far {best_auc:.3f})")
    train_net = torch.compile(net) if args.compile else net
    if world > 1:
        train_net = torch.nn.parallel.DistributedDataParallel(train_net, device_ids=[device.index] if device.type == "cuda" else None)

    generator = torch.Generator()
    train_sampler = (DistributedSampler(train_ds, shuffle=True, seed=args.seed, drop_last=True) if world > 1
                     else RandomSampler(train_ds, generator=generator))
    val_sampler = DistributedSampler(val_ds, shuffle=False) if world > 1 else None
    # Workers start afresh each epoch (not persistent) so their augmentation seeds come from the epoch's seed.
    train_loader = make_loader(train_ds, args.batch_size, train_sampler, args.num_workers, device,
                               drop_last=len(train_ds) // world > args.batch_size, generator=generator)
    val_loader = make_loader(val_ds, args.batch_size, val_sampler, args.num_workers, device)
    writer = None
    if main_process:
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(os.path.join(args.log_dir, time.strftime("%Y%m%d-%H%M%S")))
    manifest_sha = file_sha256(os.path.join(args.data_dir, "manifest.csv"))

    for epoch in range(start_epoch, args.epochs + 1):
        # Seed each epoch from (SEED, epoch): a resumed run replays exactly what an uninterrupted run does.
        torch.manual_seed(args.seed + epoch)
        generator.manual_seed(args.seed + epoch)
        if world > 1:
            train_sampler.set_epoch(epoch)
            if epoch == start_epoch:
                shard = list(iter(train_sampler))
                digest = hashlib.sha256(str(sorted(shard)).encode()).hexdigest()[:12]
                print(f"rank {rank}/{world}: {len(shard)} of {len(train_ds)} training images, shard {digest}", flush=True)
        t0 = time.time()
        train_loss, train_acc = train_one_epoch(train_net, train_loader, criterion, optimizer, device, args.amp,
                                                f"epoch {epoch}/{args.epochs}")
        if world > 1:  # BatchNorm running statistics are per process: use rank 0's everywhere
            for buffer in net.buffers():
                dist.broadcast(buffer.data, 0)
        y, p, val_loss = predict_split(net, val_loader, criterion, device, args.amp, world)
        threshold = threshold_for_sensitivity(y, p, args.target_sensitivity)
        m = model.binary_metrics(y, p, threshold)
        history.append(dict(epoch=epoch, train_loss=train_loss, train_accuracy=train_acc, val_loss=val_loss,
                            seconds=time.time() - t0, **m))
        improved = m["roc_auc"] > best_auc
        if improved:
            best_auc, bad_epochs = m["roc_auc"], 0
        else:
            bad_epochs += 1
        log(f"epoch {epoch:3d} | train loss {train_loss:.4f} acc {train_acc:.3f} | val loss {val_loss:.4f} "
            f"acc {m['accuracy']:.3f} sens {m['sensitivity']:.3f} spec {m['specificity']:.3f} "
            f"AUC {m['roc_auc']:.3f} | threshold {threshold:.3f} | {time.time() - t0:.0f}s" + (" *" if improved else ""))
        if main_process:
            state = model.checkpoint_state(net, cfg, threshold, m, epoch, manifest_sha)
            if improved:
                model.save_checkpoint(args.output, state)
            state.update(optimizer=optimizer.state_dict(), best_auc=best_auc, bad_epochs=bad_epochs,
                         history=json.dumps(history))
            model.save_checkpoint(args.resume_file, state)
            for key in ["train_loss", "val_loss", "accuracy", "sensitivity", "specificity", "f1", "roc_auc"]:
                writer.add_scalar(key, history[-1][key], epoch)
            save_curves(history, "training_curves.png")
        if args.patience and bad_epochs >= args.patience:
            log(f"early stop: no better validation ROC-AUC for {args.patience} epochs")
            break

    if world > 1:
        flat = torch.cat([t.detach().float().flatten().cpu() for t in net.state_dict().values()])
        print(f"rank {rank}/{world}: final weights {hashlib.sha256(flat.numpy().tobytes()).hexdigest()[:12]}", flush=True)
        dist.destroy_process_group()
    if main_process:
        writer.close()
        best = max(history, key=lambda h: h["roc_auc"])
        log(f"best epoch {best['epoch']}: val ROC-AUC {best['roc_auc']:.3f}, sensitivity {best['sensitivity']:.3f}, "
            f"specificity {best['specificity']:.3f} at threshold {best['threshold']:.3f} -> {args.output}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        print(f"\ninterrupted; {OUTPUT} holds the best finished epoch, continue with --resume", file=sys.stderr)
        sys.exit(130)
    except OSError as e:  # an unreadable image (from a DataLoader worker: the text of the error), a full disk...
        model.die(str(e).strip().splitlines()[-1].removeprefix("OSError: "))
