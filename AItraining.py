"""
Train the benign/malignant classifier on dataset/train, validate on dataset/val every epoch, and keep the
best epoch (by validation ROC-AUC) in skin_model.pth.

    python AItraining.py                          # defaults below; the recipe follows the starting point
    python AItraining.py --no-pretrained --epochs 30 --image-size 128
    python AItraining.py --resume                 # continue the run in skin_model_last.pth (--epochs N: extend it)
    torchrun --nproc_per_node=2 AItraining.py     # several processes / GPUs / machines (DDP)

Two recipes (model.RECIPES; the README's table), chosen by the starting point and printed first: finetune with
ImageNet weights (Adam, peak lr 1e-4), scratch from random weights (AdamW 3e-3, warm-up then cosine, 100 epochs,
no early stop: the validation ROC-AUC plateaus near chance first). Knobs left at None take the recipe's value.

The photos are decoded once into a uint8 cache on the training device when it fits in CACHE_GB (else DataLoader
workers decode them every epoch) and augmented there per batch (skinlesion/batches.py); both paths give the same
run.
Writes skin_model.pth (best epoch, its threshold chosen on validation for TARGET_SENSITIVITY), skin_model_last.pth
(for --resume), training_curves.png beside them, runs/<run>/ (TensorBoard). Warns when the model is at chance.
"""

import hashlib
import json
import math
import os
import time

import numpy as np
from tqdm import tqdm

import model
from skinlesion import batches, cli, dataset, files, metrics, photos

# -----------------------------------------------------------------------------
DATA_DIR = "dataset"  # prepared by prepare_dataset.py: DATA_DIR/<train|val>/<benign|malignant>/
OUTPUT = "skin_model.pth"  # best epoch by validation ROC-AUC (on a tie, the lower validation loss)
RESUME_FILE = "skin_model_last.pth"  # latest epoch with the optimiser state and the run's settings
RESUME = False  # continue the run in RESUME_FILE with its settings (a higher --epochs extends it)
RECIPE = "auto"  # auto (finetune with ImageNet weights, scratch without), finetune or scratch
EPOCHS = None  # number of epochs; None: the recipe's (finetune 20, scratch 100)
OPTIMIZER = None  # adam or adamw; None: the recipe's (finetune adam, scratch adamw)
LR = None  # peak learning rate; None: the recipe's (finetune 1e-4, scratch 3e-3)
WEIGHT_DECAY = None  # >= 0, not on biases and norms; None: the recipe's (finetune 0, scratch 0.05)
WARMUP = None  # share of the steps with a linear warm-up, 0 to <1; None: the recipe's (finetune 0, scratch 0.05)
SCHEDULE = None  # after the warm-up: cosine (to 0) or constant; None: the recipe's (cosine)
LABEL_SMOOTHING = None  # 0 to <1; None: the recipe's (0.1)
DROP_PATH = None  # stochastic depth rate, 0 to <1; None: the recipe's (0.2)
CLASS_WEIGHTS = None  # weight the loss by inverse class frequency; None: the recipe's (yes)
PATIENCE = None  # early stop after this many epochs without a better ROC-AUC, 0 = never; None: the recipe's (5, 0)
BATCH_SIZE = 32  # images per step (per process under torchrun), >= 1
IMAGE_SIZE = 224  # network input in pixels, 32 to 2048 (224 = ImageNet; 128 trains ~3x faster)
PRETRAINED = True  # start from ImageNet weights (downloaded by timm); False = random init
WEIGHTS_FILE = None  # local ImageNet weights file (offline), e.g. "efficientnet_b0.safetensors"
TARGET_SENSITIVITY = 0.90  # threshold chosen on validation to catch this share of malignant lesions; 0 = 0.5
CACHE_GB = 2.0  # largest in-memory image cache (on the device); larger data sets are streamed from disk
NUM_WORKERS = 2  # data-loading processes, >= 0 (0 = load in the main process)
SEED = 42  # >= 0; same seed, data and device: same result
AMP = False  # bfloat16 autocast (CPU and GPU)
COMPILE = False  # torch.compile the model
LOG_DIR = "runs"  # TensorBoard logs, one sub-folder per run
# -----------------------------------------------------------------------------
SETTINGS = [
    "recipe",
    "why",
    *model.RECIPES["scratch"],
    "batch_size",
    "image_size",
    "seed",
    "target_sensitivity",
    "amp",
    "run",
]  # what a run keeps in its checkpoints; --resume takes them from RESUME_FILE


def parse_args(argv=None):
    """The flags, checked (ranges, choices, writable outputs) before any slow work."""
    args = cli.parse_flags(globals(), argv, types={k.upper(): type(v) for k, v in model.RECIPES["scratch"].items()})
    for flag, allowed in [
        ("recipe", ["auto", "finetune", "scratch"]),
        ("optimizer", ["adam", "adamw"]),
        ("schedule", ["cosine", "constant"]),
    ]:
        value = getattr(args, flag)
        cli.check(value is None or value in allowed, "--" + flag, value, "use " + " or ".join(allowed))
    for flag, low, high, wanted in [
        ("epochs", 1, 1e6, "a whole number >= 1"),
        ("lr", 1e-12, math.inf, "a number > 0"),
        ("weight_decay", 0, math.inf, "a number >= 0"),
        ("warmup", 0, 0.99, "from 0 to 0.99"),
        ("label_smoothing", 0, 0.99, "from 0 to 0.99"),
        ("drop_path", 0, 0.99, "from 0 to 0.99"),
        ("patience", 0, 1e6, "0 (never stop early) or more"),
        ("batch_size", 1, 1e5, ">= 1"),
        ("image_size", 32, 2048, "from 32 to 2048 px"),
        ("num_workers", 0, 256, ">= 0"),
        ("target_sensitivity", 0, 1, "from 0 (plain 0.5 threshold) to 1"),
        ("cache_gb", 0, math.inf, ">= 0"),
        ("seed", 0, 2**32 - 1, "from 0 to 2**32 - 1"),
    ]:
        value = getattr(args, flag)
        cli.check(
            value is None or cli.in_range(value, low, high), "--" + flag.replace("_", "-"), value, f"use {wanted}"
        )
    for flag in ("output", "resume_file"):
        cli.check_writable(getattr(args, flag), "--" + flag.replace("_", "-"))
    cli.check_writable(args.log_dir, "--log-dir", folder=True)
    return args


def setup_distributed():
    """(rank, world_size, device). Under torchrun: NCCL on GPUs, gloo on CPU."""
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", 1))
    if world == 1:
        return 0, 1, model.pick_device()
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    device = (
        torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if torch.cuda.is_available() else torch.device("cpu")
    )
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return dist.get_rank(), world, device


def resume_settings(args):
    """The resume file's state, its settings put into args (a flag that would change the run dies)."""
    state = model.read_checkpoint(args.resume_file)
    if "optimizer" not in state or "settings" not in state["meta"]:
        cli.die(
            f"--resume: {args.resume_file} has no optimiser state; resume from the {RESUME_FILE} a run writes "
            f"(--resume-file), not from {OUTPUT}"
        )
    settings, done = state["meta"]["settings"], state["meta"]["epoch"]
    for key, value in settings.items():
        if key in args.given and getattr(args, key) != value and key not in ("epochs", "patience"):
            cli.die(
                f"--resume: the run in {args.resume_file} has {key} {value}; resume without --{key.replace('_', '-')}"
                " or start a new run"
            )
        setattr(args, key, getattr(args, key) if key in args.given else value)
    if done >= args.epochs:
        cli.die(
            f"--resume: the run in {args.resume_file} already finished ({done} of {settings['epochs']} epochs); "
            f"to train longer pass a higher --epochs, e.g. --epochs {done + 10}"
        )
    if state["stopped_early"] and "patience" not in args.given:
        cli.die(
            f"--resume: the run in {args.resume_file} stopped early at epoch {done} (no better validation ROC-AUC "
            f"for {args.patience} epochs); to go on pass --patience 0 (never stop) or a higher --patience"
        )
    return state


def choose_recipe(args, imagenet):
    """Fill the knobs left at None from the recipe for the starting point; say which and why."""
    if args.recipe != "auto":
        args.why = "--recipe " + args.recipe
    elif imagenet:
        args.recipe, args.why = "finetune", "ImageNet weights loaded"
    else:
        args.recipe, args.why = (
            "scratch",
            "random weights: " + ("ImageNet weights could not be loaded" if args.pretrained else "--no-pretrained"),
        )
    for key, value in model.RECIPES[args.recipe].items():
        setattr(args, key, value if getattr(args, key) is None else getattr(args, key))


def photo_split(data_dir, split):
    """(paths, labels) of data_dir/split, checked by dataset.class_folders."""
    class_files, others = dataset.class_folders(os.path.join(data_dir, split), f"{split} folder")
    if others:
        cli.warn(f"{os.path.join(data_dir, split)}: {len(others)} file(s) that are not images skipped")
    return [f for c in model.CLASSES for f in class_files[c]], np.array(
        [i for i, c in enumerate(model.CLASSES) for _ in class_files[c]]
    )


def warn_small_photos(paths, short):
    """Photos whose shorter side is under short px get enlarged by the evaluation resize: say so, once."""
    from PIL import Image

    small = 0
    for path in paths:
        try:
            with Image.open(path) as img:  # the header only
                small += min(img.size) < short
        except Exception:  # unreadable: reported when it is decoded
            pass
    if small:
        cli.warn(
            f"{small} of {len(paths)} training photos are smaller than {short} px (shorter side), what IMAGE_SIZE "
            f"needs: they are enlarged. prepare_dataset.py shrinks to --resize-to (256 by default): re-run it "
            f"with --resize-to {short} if the originals are larger, or lower --image-size"
        )


def train_one_epoch(net, batches, criterion, optimizer, scheduler, amp, desc, steps=None):
    """Train on (x, y) batches already normalised on the device; (mean loss, accuracy). Dies at once when
    the loss stops being a number: the checkpoints keep the last good epoch."""
    import torch

    net.train()
    total_loss, correct, seen = 0.0, 0, 0
    for step, (x, y) in enumerate(tqdm(batches, desc=desc, total=steps, leave=False, disable=None)):
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            logits = net(x)
            loss = criterion(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        value = loss.item()
        if not math.isfinite(value):
            cli.die(
                f"training diverged: the loss became {value} in {desc}, step {step + 1}, at learning rate "
                f"{optimizer.param_groups[0]['lr']:.3g}; lower --lr. The checkpoints keep the last good epoch"
            )
        total_loss += value * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        seen += len(y)
    return total_loss / seen, correct / seen


def predict_split(net, batches, amp, world):
    """(labels, P(malignant), mean loss) over (index, x, y) batches of a split, gathered from every process."""
    import torch
    import torch.distributed as dist

    net.eval()
    indices, labels, probs, losses = [], [], [], []
    with torch.inference_mode():
        for i, x, y in tqdm(batches, desc="validate", leave=False, disable=None):
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
                logits = net(x).float()
            losses += torch.nn.functional.cross_entropy(logits, y, reduction="none").tolist()
            probs += torch.softmax(logits, 1)[:, 1].tolist()
            labels, indices = labels + y.tolist(), indices + list(i)
    if world > 1:  # each process scored its share: gather everything, each image once, in order
        gathered = [None] * world
        dist.all_gather_object(gathered, (indices, labels, probs, losses))
        merged = {i: (label, p, s) for part in gathered for i, label, p, s in zip(*part)}
        labels, probs, losses = zip(*[merged[i] for i in sorted(merged)])
    if not model.is_probability(probs).all():
        cli.die(
            "training diverged: the model gives non-finite probabilities on the validation split; lower --lr. "
            "The checkpoints keep the last good epoch"
        )
    return np.array(labels), np.array(probs), float(np.mean(losses))


def save_curves(history, path):
    """Loss and validation metrics per epoch, the best epoch marked, chance (0.5) dashed for ROC-AUC."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs, best = [h["epoch"] for h in history], max(history, key=lambda h: (h["roc_auc"], -h["val_loss"]))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
    ax1.plot(epochs, [h["train_loss"] for h in history], ".-", label="train")
    ax1.plot(epochs, [h["val_loss"] for h in history], ".-", label="validation")
    ax1.set(title="Loss", xlabel="epoch", ylabel="cross-entropy")
    for key in ["roc_auc", "sensitivity", "specificity", "accuracy"]:
        ax2.plot(
            epochs,
            [h[key] for h in history],
            ".-",
            label=key.replace("roc_auc", "ROC-AUC"),
            lw=2 if key == "roc_auc" else 1,
        )
    ax2.axhline(0.5, color="grey", ls="--", lw=1, label="chance (ROC-AUC 0.5)")
    ax2.set(title="Validation (at the chosen threshold)", xlabel="epoch", ylim=(0, 1.02))
    for ax in (ax1, ax2):
        ax.axvline(best["epoch"], color="C3", ls=":", lw=1, label=f"best epoch {best['epoch']}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    fig.tight_layout()
    files.atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)  # --help and flag mistakes answer before torch loads
    # idle OpenMP threads sleep instead of spinning (set before torch loads): 1.5-4x faster beside other work
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch
    import torch.distributed as dist

    rank, world, device = setup_distributed()
    log = print if rank == 0 else (lambda *a, **k: None)
    resumed = resume_settings(args) if args.resume else None

    # data folders first (a wrong one is one line, before any download), then model init and recipe
    (train_paths, train_y), (val_paths, val_y) = photo_split(args.data_dir, "train"), photo_split(args.data_dir, "val")
    torch.manual_seed(args.seed)
    if not resumed:
        weights, imagenet = model.build_model(args.pretrained, args.weights_file)
        choose_recipe(args, imagenet)
        args.run = time.strftime("%Y%m%d-%H%M%S")
    net = model.build_model(pretrained=False, drop_path=args.drop_path)[0]  # the recipe's stochastic depth
    net.load_state_dict(resumed["state_dict"] if resumed else weights.state_dict())
    net = model.prepare_for_device(net, device)
    cfg = model.data_config(net, args.image_size)
    settings = {key: getattr(args, key) for key in SETTINGS}
    log(f"recipe: {args.recipe} ({args.why}): " + ", ".join(f"{k} {settings[k]}" for k in model.RECIPES[args.recipe]))

    # data: a uint8 cache on the device, or workers streaming from disk; augmented on the device either way
    short = int(args.image_size / cfg["crop_pct"])  # what the evaluation resizes the shorter side to (256 for 224)
    warn_small_photos(train_paths, short)
    gigabytes = 3 * (len(train_paths) * short**2 + len(val_paths) * args.image_size**2) / 1e9
    cached = gigabytes <= args.cache_gb
    log(
        f"train: {len(train_paths)} images {dict(zip(model.CLASSES, np.bincount(train_y).tolist()))}, val: "
        f"{len(val_paths)} images, device: {device}, processes: {world}, image size {args.image_size}, photos "
        + (f"cached on the device ({gigabytes:.2f} GB)" if cached else f"streamed ({gigabytes:.2f} GB > CACHE_GB)")
    )
    train = batches.Split(
        photos.Photos(train_paths, short, 1.0, cfg["interpolation"]),
        train_y,
        cached,
        args.num_workers,
        device,
        "caching train",
    )
    val = batches.Split(
        photos.Photos(val_paths, args.image_size, cfg["crop_pct"], cfg["interpolation"]),
        val_y,
        cached,
        args.num_workers,
        device,
        "caching val",
    )
    shard = list(range(rank, len(val_paths), world))  # this process's share of the validation photos
    val_order = [shard[i : i + args.batch_size] for i in range(0, len(shard), args.batch_size)]
    steps = len(train_paths) // world // args.batch_size or 1

    # optimizer, schedule, loss
    counts = np.bincount(train_y, minlength=len(model.CLASSES))
    class_weights = len(train_y) / (len(counts) * counts) if args.class_weights else None
    criterion = model.make_criterion(args.label_smoothing, class_weights).to(device)
    optimizer = model.make_optimizer(net, args.optimizer, args.lr, args.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: model.lr_factor(step, args.epochs * steps, args.warmup, args.schedule)
    )
    start_epoch, best, bad_epochs, history = 1, [-1.0, -math.inf], 0, []  # best: (ROC-AUC, -val loss)
    if resumed:
        optimizer.load_state_dict(resumed["optimizer"])
        schedule.load_state_dict(resumed["schedule"])
        start_epoch, best, bad_epochs = resumed["meta"]["epoch"] + 1, resumed["best"], resumed["bad_epochs"]
        history = json.loads(resumed["history"])
        log(
            f"resuming from {args.resume_file} after epoch {start_epoch - 1} of {args.epochs} "
            f"(best ROC-AUC so far {best[0]:.3f})"
        )
    train_net = torch.compile(net) if args.compile else net
    if world > 1:
        train_net = torch.nn.parallel.DistributedDataParallel(
            train_net, device_ids=[device.index] if device.type == "cuda" else None
        )
    from torch.utils.tensorboard import SummaryWriter

    writer = (
        SummaryWriter(os.path.join(args.log_dir, args.run), purge_step=start_epoch) if rank == 0 else None
    )  # one run
    manifest = os.path.join(args.data_dir, "manifest.csv")
    manifest_sha = files.file_sha256(manifest) if os.path.isfile(manifest) else None

    # training loop
    generator, generator_device = torch.Generator(), torch.Generator(device=device)
    for epoch in range(start_epoch, args.epochs + 1):
        for g in (generator, generator_device, torch):  # each epoch from (SEED, epoch): a resumed run replays exactly
            g.manual_seed(args.seed + epoch)
        t0 = time.time()
        epoch_batches = batches.train_batches(train, args.batch_size, cfg, generator, generator_device, rank, world)
        train_loss, train_acc = train_one_epoch(
            train_net, epoch_batches, criterion, optimizer, schedule, args.amp, f"epoch {epoch}/{args.epochs}", steps
        )
        if world > 1:  # BatchNorm running statistics are per process: use rank 0's everywhere
            for buffer in net.buffers():
                dist.broadcast(buffer.data, 0)
        y, p, val_loss = predict_split(
            net, ((b, photos.normalise_batch(x, cfg), y) for b, x, y in val.batches(val_order)), args.amp, world
        )
        threshold = metrics.threshold_for_sensitivity(y, p, args.target_sensitivity)
        m = metrics.binary_metrics(y, p, threshold)
        history.append(
            dict(
                epoch=epoch,
                train_loss=train_loss,
                train_accuracy=train_acc,
                val_loss=val_loss,
                lr=optimizer.param_groups[0]["lr"],
                seconds=time.time() - t0,
                **m,
            )
        )
        improved = [m["roc_auc"], -val_loss] > best  # equal ROC-AUC (1.0 on easy data): the lower loss wins
        best, bad_epochs = ([m["roc_auc"], -val_loss], 0) if improved else (best, bad_epochs + 1)
        stopped_early = bool(args.patience) and bad_epochs >= args.patience
        log(
            f"epoch {epoch:3d} | train loss {train_loss:.4f} acc {train_acc:.3f} | val loss {val_loss:.4f} "
            f"acc {m['accuracy']:.3f} sens {m['sensitivity']:.3f} spec {m['specificity']:.3f} AUC {m['roc_auc']:.3f} "
            f"| threshold {threshold:.3f} | {time.time() - t0:.0f}s" + (" *" if improved else "")
        )
        if rank == 0:  # checkpoints (each written atomically), curves, TensorBoard
            ci = metrics.bootstrap_ci(y, p, metric_fn=metrics.roc_auc)["value"]
            state = model.checkpoint_state(
                net,
                cfg,
                threshold,
                val_metrics=m,
                val_auc_ci95=list(ci),
                epoch=epoch,
                at_chance=metrics.at_chance(ci),
                settings=settings,
                manifest_sha256=manifest_sha,
            )
            if improved:
                model.save_checkpoint(args.output, state)
            state.update(
                optimizer=optimizer.state_dict(),
                schedule=schedule.state_dict(),
                best=best,
                bad_epochs=bad_epochs,
                stopped_early=stopped_early,
                history=json.dumps(history),
            )
            model.save_checkpoint(args.resume_file, state)
            for key in ["train_loss", "val_loss", "lr", "accuracy", "sensitivity", "specificity", "f1", "roc_auc"]:
                writer.add_scalar(key, history[-1][key], epoch)
            save_curves(history, os.path.join(os.path.dirname(args.output), "training_curves.png"))
        if stopped_early:
            log(f"early stop: no better validation ROC-AUC for {args.patience} epochs")
            break

    # the end: say how good the best epoch is, and when it is no better than chance
    if world > 1:
        flat = torch.cat([t.detach().float().flatten().cpu() for t in net.state_dict().values()])
        print(
            f"rank {rank}/{world}: final weights {hashlib.sha256(flat.numpy().tobytes()).hexdigest()[:12]}", flush=True
        )
        dist.destroy_process_group()
    if rank == 0:
        writer.close()
        final = model.read_checkpoint(args.output)["meta"]
        m, (low, high) = final["val_metrics"], final["val_auc_ci95"]
        log(
            f"best epoch {final['epoch']}: val ROC-AUC {m['roc_auc']:.3f} (95% CI {low:.3f}-{high:.3f}), sensitivity "
            f"{m['sensitivity']:.3f}, specificity {m['specificity']:.3f} at threshold {m['threshold']:.3f} "
            f"-> {args.output}"
        )
        if final["at_chance"]:
            cli.warn(
                f"this model cannot be told from chance: the 95% interval of its validation ROC-AUC "
                f"({low:.3f}-{high:.3f}) includes 0.5. Do not use its predictions. What helps: ImageNet weights "
                "(--weights-file, see README), more photos (prepare_dataset.py --n-per-class), more --epochs"
            )


if __name__ == "__main__":
    cli.run_script(main, f"interrupted; {OUTPUT} holds the best finished epoch, continue with --resume")
