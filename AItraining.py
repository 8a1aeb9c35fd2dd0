"""
Train the skin-lesion classifier on dataset/train, validate on dataset/val every epoch, and keep the best epoch
(by the benign/malignant validation ROC-AUC) in skin_model.pth, with its model card skin_model.md beside it.

    python AItraining.py                          # defaults below; the recipe follows the starting point
    python AItraining.py --no-pretrained --epochs 30 --image-size 128
    python AItraining.py --resume                 # continue the run in skin_model_last.pth (--epochs N: extend it)
    torchrun --nproc_per_node=2 AItraining.py     # several processes / GPUs / machines (DDP)

The classes are the dataset's: benign and malignant, or lesion types (prepare_dataset.py --label-column), each
on one side; P(malignant) sums the malignant ones. Two recipes (model.RECIPES), chosen by the starting point:
finetune with ImageNet weights (Adam, peak lr 1e-4), scratch from random weights (AdamW 3e-3, warm-up, cosine,
100 epochs); knobs at None take the recipe's value. The photos are cached as uint8 on the training device when
they fit in CACHE_GB (else workers decode them every epoch), and augmented there (skinlesion/training.py).

Each epoch prints numbers that need no threshold: the losses, the validation ROC-AUC and log-loss of
P(malignant), and with types their balanced accuracy. For the epoch kept, a calibration of P(malignant) is
fitted on the validation split (temperature or Platt scaling: a clinician reads P as a chance), and the
operating point chosen: the threshold that catches TARGET_SENSITIVITY of the malignant validation photos, stable
on a small split (a smooth Harrell-Davis quantile), with the sensitivity and specificity it gives there and their
95% intervals. Last, how familiar a photo is (skinlesion/familiarity.py): the distance of its features to the
training photos', limited where 99% of the validation photos lie; predict.py gives no answer beyond it. Writes
skin_model.pth, skin_model.md, skin_model_last.pth (for --resume) and training_curves.png beside them, and
runs/<run>/ (TensorBoard).
"""

from skinlesion import interrupts

if __name__ == "__main__":  # first, before the libraries load: a Ctrl-C while they do is one line, not a traceback
    interrupts.one_line_while_loading()

import json
import math
import os
import shlex
import time

import numpy as np

import model
from skinlesion import (
    card,
    cli,
    dataset,
    devices,
    familiarity,
    files,
    numbers,
    photos,
    plots,
    remote,
    training,
)

# -----------------------------------------------------------------------------
DATA_DIR = "dataset"  # by prepare_dataset.py: DATA_DIR/<train|val>/<class>/ and manifest.csv, or its shards/
NETWORK_TIMEOUT = 600  # seconds one read of a remote shard or index may take, 1 to 86400 (connecting: 30 at most)
OUTPUT = "skin_model.pth"  # best epoch by validation ROC-AUC (on a tie, the lower validation loss); its card: .md
RESUME_FILE = "skin_model_last.pth"  # latest epoch with the optimiser state and the run's settings
RESUME = False  # continue the run in RESUME_FILE with its settings (a higher --epochs extends it)
RECIPE = "auto"  # auto (finetune with ImageNet weights, scratch without), finetune or scratch
EPOCHS = None  # number of epochs, 1 to 1e6; None: the recipe's (finetune 20, scratch 100)
OPTIMIZER = None  # adam or adamw; None: the recipe's (finetune adam, scratch adamw)
LR = None  # peak learning rate, > 0; None: the recipe's (finetune 1e-4, scratch 3e-3)
WEIGHT_DECAY = None  # >= 0, not on biases and norms; None: the recipe's (finetune 0, scratch 0.05)
WARMUP = None  # share of the steps with a linear warm-up, 0 to 0.99; None: the recipe's (finetune 0, scratch 0.05)
SCHEDULE = None  # after the warm-up: cosine (to 0) or constant; None: the recipe's (cosine)
LABEL_SMOOTHING = None  # 0 to 0.99; None: the recipe's (0.1)
DROP_PATH = None  # stochastic depth rate, 0 to 0.99; None: the recipe's (0.2)
CLASS_WEIGHTS = None  # weight the loss by inverse class frequency: yes or no; None: the recipe's (yes)
PATIENCE = None  # stop after this many epochs without a better ROC-AUC, 0 to 1e6 (0: never); None: the recipe's (5, 0)
BATCH_SIZE = 32  # images per step (per process under torchrun), 1 to 100000
IMAGE_SIZE = 224  # network input in pixels, 32 to 2048 (224 = ImageNet; 128 trains ~3x faster)
MODEL_NAME = model.MODEL_NAME  # the network: a timm architecture whose head is an average pool and a linear layer
PRETRAINED = True  # start from ImageNet weights (downloaded by timm); False = random init
WEIGHTS_FILE = None  # local ImageNet weights of MODEL_NAME (offline), e.g. "model.safetensors"; must fit every tensor
TARGET_SENSITIVITY = 0.90  # the threshold catches this share of the malignant validation photos, 0 to 1; 0 = plain 0.5
CACHE_GB = 2.0  # largest in-memory image cache (on the device), >= 0; larger data sets are streamed from disk
NUM_WORKERS = 2  # data-loading processes, 0 to 256 (0 = load in the main process)
SEED = 42  # 0 to 2**32 - 1; same seed, data and device: same result
AMP = False  # bfloat16 autocast (CPU and GPU)
COMPILE = False  # torch.compile the model
LOG_DIR = "runs"  # TensorBoard logs, one sub-folder per run
OVERWRITE = False  # replace output files that this project did not write (never done without it)
# -----------------------------------------------------------------------------
# what a run keeps in its checkpoints (--resume takes them back), and the choices of its text flags
SETTINGS = list(model.RUN_SETTINGS)  # the flags a run keeps, with their shapes in the model file
CHOICES = [("recipe", ["auto", "finetune", "scratch"]), ("optimizer", ["adam", "adamw"]),
           ("schedule", ["cosine", "constant"])]  # fmt: skip
RESUME_KEYS = training.RESUME_KEYS  # what a resume checkpoint holds besides the weights and meta


def parse_args(argv=None):
    """The flags, checked (ranges, choices, outputs that may be written) before any slow work."""
    args = cli.parse_flags(globals(), argv, types={k.upper(): type(v) for k, v in model.RECIPES["scratch"].items()})
    for flag, allowed in CHOICES:
        value = getattr(args, flag)
        cli.check(value is None or value in allowed, "--" + flag, value, "use " + " or ".join(allowed))
    args.card = os.path.splitext(args.output)[0] + ".md"
    args.curves = os.path.join(os.path.dirname(args.output), "training_curves.png")
    outputs = {
        "--output": (args.output, "model"),
        "--resume-file": (args.resume_file, "resume checkpoint"),
        "--output's card": (args.card, "model card"),
        "--output's training_curves.png": (args.curves, "picture"),
    }
    seen = {}
    for flag, (path, kind) in outputs.items():
        same = seen.setdefault(os.path.realpath(path), flag)
        cli.check(
            same == flag, flag, path, f"is {same} too; pass another path (resume from the {RESUME_FILE} a run writes)"
        )
        files.check_output(path, flag, kind, [args.weights_file], args.overwrite)
        cli.check_writable(path, flag)
    cli.check_writable(args.log_dir, "--log-dir", folder=True)
    remote.set_seconds(args.network_timeout)  # remote shards: every read has a deadline
    return args


def resume_settings(args, classes):
    """The resume file's state, its settings put into args (a flag that would change the run dies)."""
    state, resume_file = model.read_checkpoint(args.resume_file), cli.printable(args.resume_file)
    missing = [key for key in RESUME_KEYS if key not in state] + [
        k for k in ("settings", "epoch") if k not in state["meta"]
    ]
    fault = not missing and training.resume_fault(state)
    if fault:
        cli.die(f"--resume: {resume_file} is refused: {fault}; start a new run")
    if missing:
        cli.die(
            f"--resume: {resume_file} has no optimiser state ({', '.join(missing)}); resume from the "
            f"{RESUME_FILE} a run writes (--resume-file), not from {OUTPUT}"
        )
    if state["meta"]["classes"] != classes:
        cli.die(
            f"--resume: the run in {resume_file} trained classes {state['meta']['classes']}, "
            f"{cli.printable(args.data_dir)} has {classes}; start a new run"
        )
    settings, done = state["meta"]["settings"], state["meta"]["epoch"]
    for key, value in settings.items():
        if key in args.given and getattr(args, key) != value and key not in ("epochs", "patience"):
            cli.die(
                f"--resume: the run in {resume_file} has {key} {value}; resume without "
                f"{cli.flag_name(key)} or start a new run"
            )
        setattr(args, key, getattr(args, key) if key in args.given else value)
    if done >= args.epochs:
        cli.die(
            f"--resume: the run in {resume_file} already finished ({done} of {settings['epochs']} epochs); "
            f"to train longer pass a higher --epochs, e.g. --epochs {done + 10}"
        )
    if state["stopped_early"] and "patience" not in args.given:
        cli.die(
            f"--resume: the run in {resume_file} stopped early at epoch {done} (no better validation "
            f"ROC-AUC for {args.patience} epochs); to go on pass --patience 0 (never stop) or a higher --patience"
        )
    return state


def choose_recipe(args, imagenet):
    """Fill the knobs left at None from the recipe for the starting point; say which and why."""
    if args.recipe != "auto":
        args.why = "--recipe " + args.recipe
    elif imagenet:
        args.recipe, args.why = "finetune", "ImageNet weights loaded"
    else:
        cause = "ImageNet weights could not be loaded" if args.pretrained else "--no-pretrained"
        args.recipe, args.why = "scratch", "random weights: " + cause
    for key, value in model.RECIPES[args.recipe].items():
        if getattr(args, key) is None:
            setattr(args, key, value)


def scored(labels, logits, meta, target):
    """What an epoch's validation predictions say: (numbers for the log, the metadata a model file keeps:
    calibration, operating point, metrics at its threshold and ROC-AUC interval)."""
    mask = model.malignant_mask(meta)
    y, z = mask[labels].astype(int), model.malignant_log_odds(logits, mask)
    logged = dict(
        roc_auc=float(numbers.roc_auc(y, z)),
        val_log_loss=float(numbers.log_loss(y, numbers.calibrated(z, None))),
    )
    if len(meta["classes"]) > 2:
        logged["type_balanced_accuracy"] = numbers.balanced_accuracy(labels, model.class_probabilities(logits))
    fitted = numbers.fit_calibration(y, logits, mask)  # one distribution: the malignant types add up to P(malignant)
    p, probabilities = model.predictions([logits], dict(meta, calibration=fitted))
    op = numbers.operating_point(y, p, target)
    ci = numbers.bootstrap_ci(y, p, metric_fn=numbers.roc_auc)["value"]
    val_metrics = dict(numbers.binary_metrics(y, p, op["threshold"]), **logged)
    kept = dict(
        calibration=fitted,
        operating_point=op,
        threshold=op["threshold"],
        val_metrics=val_metrics,
        val_auc_ci95=list(ci),
        at_chance=numbers.at_chance(ci),
    )
    if len(meta["classes"]) > 2:
        kept["val_types"] = numbers.types_with_intervals(labels, probabilities, meta["classes"])
    return logged, kept


def ctrl_c_message(args, resumable):
    """What a Ctrl-C says: before a resume file, that the output is as it was; then this run's output, and the
    command that continues this run (a bare --resume would continue whatever run wrote the default resume file)."""
    if not resumable:
        return f"interrupted before the first epoch finished; {cli.printable(args.output)} is as it was"
    again = ["python", "AItraining.py", "--resume", "--resume-file", args.resume_file, "--output", args.output]
    again += ["--data-dir", args.data_dir] if "data_dir" in args.given else []
    output, command = cli.printable(args.output), cli.printable(shlex.join(again))
    return f"interrupted; {output} holds the best finished epoch, continue with: {command}"


def main(argv=None):
    args = parse_args(argv)  # --help and flag mistakes answer before torch loads
    interrupts.say_on_ctrl_c(ctrl_c_message(args, args.resume))
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep: 1.5-4x faster beside other work
    import torch

    rank, world, device = devices.setup()
    log = print if rank == 0 else (lambda *a, **k: None)

    # data folders first (a wrong one is one line, before any download), then model init and recipe
    manifest = dataset.read_manifest(args.data_dir)
    classes, malignant, names = dataset.classes_of(manifest)
    resumed = resume_settings(args, classes) if args.resume else None
    train_paths, train_y = dataset.split_photos(args.data_dir, "train", classes)
    val_paths, val_y = dataset.split_photos(args.data_dir, "val", classes)
    torch.manual_seed(args.seed)
    if not resumed:
        weights, imagenet = model.build_model(args.pretrained, args.weights_file, len(classes), 0.0, args.model_name)
        choose_recipe(args, imagenet)
        args.run, args.imagenet = time.strftime("%Y%m%d-%H%M%S"), imagenet
    net = model.build_model(False, None, len(classes), args.drop_path, args.model_name)[0]
    net.load_state_dict(resumed["state_dict"] if resumed else weights.state_dict())
    net = model.prepare_for_device(net, device)
    cfg = model.data_config(net, args.image_size)
    settings = {key: getattr(args, key) for key in SETTINGS}
    log(f"recipe: {args.recipe} ({args.why}): " + ", ".join(f"{k} {settings[k]}" for k in model.RECIPES[args.recipe]))
    imagenet = resumed["meta"].get("imagenet") if resumed else args.imagenet
    meta = dict(classes=classes, malignant_classes=malignant, class_names=[names[c] for c in classes])
    meta.update(settings=settings, data=dataset.data_summary(manifest, classes, args.data_dir), imagenet=imagenet)
    meta["prior_malignant"] = float(model.malignant_mask(meta)[train_y].mean())  # what P assumes (predict.py)

    # data: a uint8 cache on the device, or workers streaming from disk; augmented on the device either way
    train, val, where = training.open_splits(args, (train_paths, train_y), (val_paths, val_y), cfg, device, rank, world)
    counts = dict(zip(classes, np.bincount(train_y, minlength=len(classes)).tolist()))
    log(
        f"train: {len(train_paths)} images {counts}, val: {len(val_paths)} images, device: {device}, processes: "
        f"{world}, image size {args.image_size}, photos {where}"
    )
    steps = len(train_paths) // world // args.batch_size or 1

    # optimizer, schedule, loss
    class_weights = None
    if args.class_weights:
        class_weights = len(train_y) / (len(classes) * np.bincount(train_y, minlength=len(classes)))
    criterion = model.make_criterion(args.label_smoothing, class_weights).to(device)
    optimizer = model.make_optimizer(net, args.optimizer, args.lr, args.weight_decay)
    total = args.epochs * steps
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: training.lr_factor(s, total, args.warmup, args.schedule)
    )
    start_epoch, best, bad_epochs, history = 1, [-1.0, -math.inf], 0, []  # best: (ROC-AUC, -val loss)
    if resumed:
        optimizer.load_state_dict(resumed["optimizer"])
        schedule.load_state_dict(resumed["schedule"])
        start_epoch, best, bad_epochs = resumed["meta"]["epoch"] + 1, resumed["best"], resumed["bad_epochs"]
        history = json.loads(resumed["history"])
        log(
            f"resuming from {cli.printable(args.resume_file)} after epoch {start_epoch - 1} of {args.epochs} (best "
            f"ROC-AUC so far {best[0]:.3f})"
        )
    train_net = torch.compile(net) if args.compile else net
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        train_net = torch.nn.parallel.DistributedDataParallel(train_net, device_ids=ids)
    writer = training.TensorBoardLog(args.log_dir, args.run, start_epoch) if rank == 0 else None
    manifest_file = os.path.join(args.data_dir, dataset.MANIFEST)
    meta["manifest_sha256"] = files.file_sha256(manifest_file) if os.path.isfile(manifest_file) else None

    # training loop
    generator, generator_device = torch.Generator(), torch.Generator(device=device)
    for epoch in range(start_epoch, args.epochs + 1):
        for g in (generator, generator_device, torch):  # each epoch from (SEED, epoch): a resumed run replays exactly
            g.manual_seed(args.seed + epoch)
        t0 = time.time()
        epoch_batches = training.train_batches(train, args.batch_size, cfg, generator, generator_device, rank, world)
        desc = f"epoch {epoch}/{args.epochs}"
        train_loss, train_acc = training.train_one_epoch(
            train_net, epoch_batches, criterion, optimizer, schedule, args.amp, desc, steps
        )
        devices.sync_buffers(net, world)
        val_share = val.own_batches(rank, world, args.batch_size)  # each photo once, on one process
        val_batches = ((b, photos.normalise_batch(x, cfg), y) for b, x, y in val_share)
        labels, logits, val_loss = training.predict_split(net, val_batches, args.amp, world)
        numbers, kept = scored(labels, logits, meta, args.target_sensitivity)
        history.append(
            dict(
                epoch=epoch,
                train_loss=train_loss,
                train_accuracy=train_acc,
                val_loss=val_loss,
                lr=optimizer.param_groups[0]["lr"],
                seconds=time.time() - t0,
                **numbers,
            )
        )
        improved = [numbers["roc_auc"], -val_loss] > best  # equal ROC-AUC (1.0 on easy data): the lower loss wins
        if improved:
            best, bad_epochs = [numbers["roc_auc"], -val_loss], 0
        else:
            bad_epochs += 1
        stopped_early = bool(args.patience) and bad_epochs >= args.patience
        types = f" types {numbers['type_balanced_accuracy']:.3f}" if "type_balanced_accuracy" in numbers else ""
        log(
            f"epoch {epoch:3d} | train loss {train_loss:.4f} acc {train_acc:.3f} | val loss {val_loss:.4f} log-loss "
            f"{numbers['val_log_loss']:.4f} AUC {numbers['roc_auc']:.3f}{types} | {time.time() - t0:.0f}s"
            + (" *" if improved else "")
        )
        if rank == 0:  # checkpoints (each written atomically), curves, TensorBoard
            state = model.checkpoint_state(net, cfg, epoch=epoch, **meta, **kept)
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
            model.save_checkpoint(args.resume_file, state, "resume checkpoint")
            interrupts.say_on_ctrl_c(ctrl_c_message(args, True))
            writer.add(history[-1], epoch)
            plots.training_curves(
                history, int(max(history, key=lambda h: (h["roc_auc"], -h["val_loss"]))["epoch"]), args.curves
            )
        if stopped_early:
            log(f"early stop: no better validation ROC-AUC for {args.patience} epochs")
            break

    # the end: how good the best epoch is, what its probabilities and threshold mean, and its card
    devices.finish(net, rank, world)
    if rank == 0:
        writer.close()
        fit_familiarity(args, train_paths, train_y, val_paths, device)
        report(args)


def fit_familiarity(args, train_paths, train_y, val_paths, device):
    """Add to the model file the kept epoch's familiarity measure (skinlesion/familiarity.py)."""
    ckpt, (net, meta) = model.read_checkpoint(args.output), model.load_checkpoint(args.output, device)
    load = dict(device=device, batch_size=args.batch_size, num_workers=args.num_workers)
    fitted = familiarity.fit_on_photos(net, meta, args.data_dir, train_paths, train_y, val_paths, **load)
    ckpt["meta"]["familiarity"], ckpt["familiarity"] = fitted[0], familiarity.state(*fitted[1:])
    model.save_checkpoint(args.output, ckpt)
    print(f"familiarity: {familiarity.limit_text(fitted[0])}")


def report(args):
    """Say how good the kept epoch is, write its card, and warn when it is at chance or its threshold useless."""
    final = model.read_checkpoint(args.output)["meta"]
    m, (low, high) = final["val_metrics"], final["val_auc_ci95"]
    op, fitted = final["operating_point"], final["calibration"]
    output = cli.printable(args.output)
    print(f"best epoch {final['epoch']}: val ROC-AUC {m['roc_auc']:.3f} (95% CI {low:.3f}-{high:.3f}) -> {output}")
    if fitted and fitted["method"] == "none":
        print("calibration: none (neither temperature nor Platt scaling lowered the cross-validated log-loss)")
    elif fitted:
        print(
            f"calibration: {fitted['method']} scaling (validation log-loss {fitted['val_log_loss_before']:.3f} -> "
            f"{fitted['val_log_loss_after']:.3f}, ECE {fitted['val_ece_before']:.3f} -> {fitted['val_ece_after']:.3f})"
        )
    print(f"operating point: threshold {op['threshold']:.3f}, {numbers.operating_point_text(op)}")
    card.write_card(args.card, final, os.path.basename(args.output), model_sha256=files.file_sha256(args.output))
    print(f"model card: {cli.printable(args.card)}")
    if final["at_chance"]:
        cli.warn(
            f"this model cannot be told from chance: the 95% interval of its validation ROC-AUC ({low:.3f}-"
            f"{high:.3f}) includes 0.5. Do not use its predictions. What helps: ImageNet weights (--weights-file, "
            "see README), more photos (prepare_dataset.py --n-per-class), more --epochs"
        )
    caution = numbers.operating_point_warning(op)
    if caution:
        cli.warn(f"{caution} on the validation split; lower or raise --target-sensitivity, or get more photos")


if __name__ == "__main__":
    interrupts.run_script(main)  # a Ctrl-C says what main told interrupts.say_on_ctrl_c
