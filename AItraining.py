"""
Train the skin-lesion classifier on dataset/train, validating on dataset/val: the best epoch, calibrated, with its
threshold and familiarity limit, in skin_model.pth and its card skin_model.md. In full: docs/reference.md.

    python AItraining.py                          # defaults below; the recipe follows the starting point
    python AItraining.py --no-pretrained --epochs 30 --image-size 128
    python AItraining.py --resume                 # continue the run in skin_model_last.pth (--epochs N: extend it)
    torchrun --nproc_per_node=2 AItraining.py     # several processes / GPUs / machines (DDP)
"""

from skinlesion import interrupts

if __name__ == "__main__":  # first, before the libraries load: a Ctrl-C while they do is one line, not a traceback
    interrupts.one_line_while_loading()

import os
import shlex
import sys
import time
from types import SimpleNamespace

import numpy as np

import model
from skinlesion import (
    card,
    dataset,
    devices,
    ensemble,
    familiarity,
    files,
    flags,
    folds,
    messages,
    metrics,
    model_file,
    photos,
    plots,
    remote,
    resume,
    splits,
    training,
)

# -----------------------------------------------------------------------------
DATA_DIR = "dataset"  # by prepare_dataset.py: DATA_DIR/<train|val>/<class>/ and manifest.csv, or its shards/
NETWORK_TIMEOUT = 600  # seconds one read of a remote shard or index may take, 1 to 86400 (connecting: 30 at most)
OUTPUT = "skin_model.pth"  # best epoch by validation ROC-AUC (on a tie, the lower validation loss); its card: .md
RESUME_FILE = "skin_model_last.pth"  # latest epoch with the optimiser state and the run's settings, and the best
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
FOLDS = None  # folds of train plus validation, 1 to 20 (1: one split); None: 5 up to 2000 such photos, else 1
DEPLOY = "ensemble"  # with folds: ensemble (the fold networks averaged) or refit (one on all photos, the folds' epochs)
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
SETTINGS = list(model_file.RUN_SETTINGS)  # the flags a run keeps, with their shapes in the model file
CHOICES = [("recipe", ["auto", "finetune", "scratch"]), ("optimizer", ["adam", "adamw"]),
           ("schedule", ["cosine", "constant"]), ("deploy", ["refit", "ensemble"])]  # fmt: skip
RESUME_KEYS = resume.RESUME_KEYS  # what a resume checkpoint holds besides the weights and meta


def parse_args(argv=None):
    """The flags, checked (ranges, choices, outputs that may be written) before any slow work."""
    types = {k.upper(): type(v) for k, v in model.RECIPES["scratch"].items()}
    args = flags.parse_flags(globals(), argv, types=dict(types, FOLDS=int))
    for flag, allowed in CHOICES:
        value = getattr(args, flag)
        flags.check(value is None or value in allowed, "--" + flag, value, "use " + " or ".join(allowed))
    args.card = os.path.splitext(args.output)[0] + ".md"
    args.curves = os.path.join(os.path.dirname(args.output), "training_curves.png")
    outputs = {
        "--output": (args.output, "model"),
        "--resume-file": (args.resume_file, "resume checkpoint"),
        "--output's card": (args.card, "model card"),
        "--output's training_curves.png": (args.curves, "picture"),
    }
    args.resume_from = args.resume_file  # what --resume reads: an input, which needs no --overwrite
    if args.resume:
        args.resume_file = resume.continued_in(args.resume_file, args.overwrite)
    seen = {}
    for flag, (path, kind) in outputs.items():
        same = seen.setdefault(os.path.realpath(path), flag)
        flags.check(
            same == flag, flag, path, f"is {same} too; pass another path (resume from the {RESUME_FILE} a run writes)"
        )
        if flag == "--resume-file":  # written where the run continues: the file it read, or beside it
            path = args.resume_file
        files.check_output(path, flag, kind, [args.weights_file], args.overwrite)
        flags.check_writable(path, flag)
    for flag, (path, kind) in outputs.items():  # and none of the others replaces the resume file it reads
        if flag != "--resume-file" and args.resume:
            files.check_output(path, flag, kind, [args.resume_from], args.overwrite)
    flags.check_writable(args.log_dir, "--log-dir", folder=True)
    remote.set_seconds(args.network_timeout)  # remote shards: every read has a deadline
    return args


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


def epoch_numbers(labels, logits, meta):
    """What an epoch's validation predictions say without a threshold (the log, the curves): ROC-AUC and log-loss
    of P(malignant), and with types their balanced accuracy."""
    mask = model.malignant_mask(meta)
    y, z = mask[labels].astype(int), model.malignant_log_odds(logits, mask)
    logged = dict(
        roc_auc=float(metrics.roc_auc(y, z)),
        val_log_loss=float(metrics.log_loss(y, metrics.calibrated(z, None))),
    )
    if len(meta["classes"]) > 2:
        logged["type_balanced_accuracy"] = metrics.balanced_accuracy(labels, model.class_probabilities(logits))
    return logged


def scored(labels, logits, meta, target):
    """What the kept epoch's validation predictions say: (numbers for the log, the metadata a model file keeps:
    calibration, operating point, metrics at its threshold and ROC-AUC interval)."""
    mask = model.malignant_mask(meta)
    y, logged = mask[labels].astype(int), epoch_numbers(labels, logits, meta)
    fitted = metrics.fit_calibration(y, logits, mask)  # one distribution: the malignant types add up to P(malignant)
    p, probabilities = model.predictions([logits], dict(meta, calibration=fitted))
    op = metrics.operating_point(y, p, target)
    ci = metrics.bootstrap_ci(y, p, metric_fn=metrics.roc_auc)["value"]
    val_metrics = dict(metrics.binary_metrics(y, p, op["threshold"]), **logged)
    kept = dict(
        calibration=fitted,
        operating_point=op,
        threshold=op["threshold"],
        val_metrics=val_metrics,
        val_auc_ci95=list(ci),
        at_chance=metrics.at_chance(ci),
    )
    if len(meta["classes"]) > 2:
        kept["val_types"] = metrics.types_with_intervals(labels, probabilities, meta["classes"])
    return logged, kept


def ctrl_c_message(args, resumable):
    """What a Ctrl-C says: before a resume file, that the output is as it was; then that it still is (a run writes
    it once, when it ends), and the command that continues this run (a bare --resume would continue whatever run
    wrote the default resume file)."""
    output = messages.printable(args.output)
    if not resumable:
        return f"interrupted before the first epoch finished; {output} is as it was"
    again = ["python", "AItraining.py", "--resume", "--resume-file", args.resume_file, "--output", args.output]
    again += ["--data-dir", args.data_dir] if "data_dir" in args.given else []
    command = messages.printable(shlex.join(again))
    return f"interrupted; {output} is as it was (a run writes it when it ends), continue with: {command}"


def main(argv=None):
    args = parse_args(argv)  # --help and flag mistakes answer before torch loads
    interrupts.say_on_ctrl_c(ctrl_c_message(args, args.resume))
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep: 1.5-4x faster beside other work
    import torch

    rank, world, device = devices.setup()
    log = print if rank == 0 else (lambda *a, **k: None)

    # data folders first (a wrong one is one line, before any download), then the resumed run, model and recipe
    manifest = dataset.read_manifest(args.data_dir)
    classes = dataset.classes_of(manifest)
    train_photos = splits.split_photos(args.data_dir, "train", classes[0])
    resumed = None
    if args.resume:
        resumed = model_file.read_checkpoint(args.resume_from)
        resume.take_back(resumed, args, classes[0], dataset.manifest_sha256(args.data_dir), (RESUME_FILE, OUTPUT))
    val_photos = training.validation_photos(args.data_dir, classes[0], args.folds)
    stages, pool = folds.run_plan(args, manifest, train_photos, val_photos)
    torch.manual_seed(args.seed)
    net, initial = starting_network(args, resumed, len(classes[0]), device)
    meta = run_meta(args, manifest, classes, train_photos[1], resumed)
    log(
        f"recipe: {args.recipe} ({args.why}): "
        + ", ".join(f"{k} {getattr(args, k)}" for k in model.RECIPES[args.recipe])
    )
    cfg = model.data_config(net, args.image_size)
    seen_as = dict(meta, **model_file.checkpoint_state(net, cfg, **meta)["meta"])  # its file's crop and normalisation
    run = SimpleNamespace(args=args, net=net, cfg=cfg, meta=meta, seen_as=seen_as, device=device, rank=rank,
                          world=world, log=log, stages=stages, pool=pool)  # fmt: skip
    progress = resume.progress_of(resumed)
    progress["initial"] = initial
    train_stages(run, progress, resumed, train_photos, val_photos)

    # the end: the kept epoch's calibration, operating point and familiarity, its card, then its model file, once
    devices.finish(net, rank, world)
    if rank == 0:
        finish(run, progress, train_photos, val_photos)


def train_stages(run, progress, resumed, train_photos, val_photos):
    """Train each stage of the run from where progress is (one split; or each fold, then the refit): a new stage
    starts from the starting weights; a fold done keeps its best epoch, out-of-fold logits and familiarity."""
    splits, last = None, len(run.stages) - 1
    for index in range(progress["stage"], len(run.stages)):
        stage = run.stages[index]
        if index > progress["stage"]:
            resume.next_stage(progress, index)
            run.net.load_state_dict(progress["initial"])
        epochs = folds.refit_epochs(progress["done"]) if stage.name == "refit" else run.args.epochs
        complete = resume.is_complete(progress, epochs, "patience" in run.args.given)
        resume.say_where_it_resumes(run.args, resumed and index == last and complete, run.log)
        if not complete:
            train_y = train_photos[1] if run.pool is None else run.pool[1][stage.train]
            batch = min(run.args.batch_size, len(train_y) // run.world or 1)
            training.check_memory(run.net, run.args.image_size, batch, run.device, run.world)
            splits = splits or folds.open_run(run, train_photos, val_photos)
            train_epochs(run, progress, stage, splits, epochs, train_y)
        if stage.held is not None and len(stage.held) and len(progress["done"]) == index:  # not kept yet
            folds.fold_done(run, progress, stage)


def run_meta(args, manifest, classes, train_y, resumed):
    """What the run's files keep besides the weights: the classes, the settings, the data, the starting weights,
    the prior P assumes, the manifest's SHA-256, the format."""
    classes, malignant, names = classes
    meta = dict(format=model_file.FORMAT, classes=classes, malignant_classes=malignant)
    meta.update(class_names=[names[c] for c in classes], settings={key: getattr(args, key) for key in SETTINGS})
    meta.update(data=dataset.data_summary(manifest, classes, args.data_dir), manifest_sha256=None)
    meta["imagenet"] = resumed["meta"].get("imagenet") if resumed else args.imagenet
    meta["prior_malignant"] = float(model.malignant_mask(meta)[train_y].mean())  # what P assumes (predict.py)
    meta["manifest_sha256"] = dataset.manifest_sha256(args.data_dir)
    return meta


def starting_network(args, resumed, n_classes, device):
    """(the network the run starts from, on device, its starting weights): the resumed run's latest weights (and
    its starting ones: folds start from them), or ImageNet's (or random ones) with the recipe for that start chosen
    into args."""
    if not resumed:
        weights, imagenet = model.build_model(args.pretrained, args.weights_file, n_classes, 0.0, args.model_name)
        choose_recipe(args, imagenet)
        args.run, args.imagenet = time.strftime("%Y%m%d-%H%M%S"), imagenet
    net = model.build_model(False, None, n_classes, args.drop_path, args.model_name)[0]
    net.load_state_dict(resumed["state_dict"] if resumed else weights.state_dict())
    initial = resumed.get("initial") if resumed else {k: v.clone() for k, v in weights.state_dict().items()}
    return model.prepare_for_device(net, device), initial if args.folds > 1 else None


def train_epochs(run, progress, stage, splits, epochs, train_y):
    """Train a stage from the epoch after progress's to epochs (or an early stop), validating each on the photos it
    holds out (the refit: none): the best epoch's weights and validation logits kept in progress and, with each
    epoch, in the resume checkpoint."""
    import torch

    args, (train, val), index = run.args, splits, progress["stage"]
    steps = len(train_y) // run.world // args.batch_size or 1
    step = training_step_parts(run, progress, train_y, steps, epochs, stage.name)
    generator, generator_device = torch.Generator(), torch.Generator(device=run.device)
    for epoch in range(progress["epoch"] + 1, epochs + 1):
        for g in (generator, generator_device, torch):  # each epoch from (SEED, stage, epoch): a resumed run replays
            g.manual_seed(args.seed + epoch + 100_000 * index)
        t0, desc = time.time(), f"{stage.name} epoch {epoch}/{epochs}".strip()
        order = None if stage.train is None else stage.train[torch.randperm(len(stage.train), generator=generator)]
        batches = training.train_batches(train, args.batch_size, run.cfg, generator, generator_device, run.rank,
                                         run.world, order)  # fmt: skip
        loss, accuracy = training.train_one_epoch(step.net, batches, step.criterion, step.optimizer, step.schedule,
                                                  args.amp, desc, steps)  # fmt: skip
        devices.sync_buffers(run.net, run.world)
        found = dict(epoch=epoch, train_loss=loss, train_accuracy=accuracy, lr=step.optimizer.param_groups[0]["lr"])
        logits = np.zeros((0, len(run.meta["classes"])))
        if stage.held is None or len(stage.held):
            held = {} if stage.held is None else dict(indices=stage.held)  # each photo once, on one process
            val_batches = ((b, photos.normalise_batch(x, run.cfg), y)
                           for b, x, y in val.own_batches(run.rank, run.world, args.batch_size, **held))  # fmt: skip
            labels, logits, val_loss = training.predict_split(run.net, val_batches, args.amp, run.world)
            found.update(val_loss=val_loss, **epoch_numbers(labels, logits, run.meta))
        improved = resume.record_epoch(progress, dict(found, seconds=time.time() - t0), run.net, logits, args.patience)
        run.log(training.epoch_line(found, time.time() - t0, improved, stage.name))
        if run.rank == 0:
            after_epoch(run, progress, step)
        if progress["stopped_early"]:
            run.log(f"early stop: no better validation ROC-AUC for {args.patience} epochs")
            break
    if step.writer:
        step.writer.close()


def after_epoch(run, progress, step):
    """On rank 0 after each epoch: the resume checkpoint (written atomically), TensorBoard, the curves."""
    save_progress(run, progress, step.optimizer, step.schedule)
    interrupts.say_on_ctrl_c(ctrl_c_message(run.args, True))
    step.writer.add(progress["history"][-1], progress["stage"] * run.args.epochs + progress["epoch"])  # on over stages
    if "roc_auc" in progress["history"][-1]:  # the curves of the latest stage that validates
        plots.training_curves(progress["history"], progress["best_epoch"], run.args.curves)


def training_step_parts(run, progress, train_y, steps, epochs, stage):
    """The recipe's loss (class weights: inverse class frequency) and optimizer, then training.step_parts: its
    schedule, the network that trains, the TensorBoard writer."""
    args, n_classes = run.args, len(run.meta["classes"])
    class_weights = None
    if args.class_weights:
        class_weights = len(train_y) / (n_classes * np.bincount(train_y, minlength=n_classes))
    criterion = model.make_criterion(args.label_smoothing, class_weights).to(run.device)
    optimizer = model.make_optimizer(run.net, args.optimizer, args.lr, args.weight_decay)
    return training.step_parts(run, progress, criterion, optimizer, steps, epochs, stage)


def save_progress(run, progress, optimizer, schedule, finished=False):
    """The resume checkpoint: the latest epoch's weights and optimiser state, and the best epoch's weights and
    validation logits (the model file is written from them when the run ends)."""
    state = model_file.checkpoint_state(run.net, run.cfg, epoch=progress["epoch"], **run.meta)
    if optimizer is not None:
        progress.update(optimizer=optimizer.state_dict(), schedule=schedule.state_dict())
    state.update(resume.resume_state(progress, finished))
    model_file.save_checkpoint(run.args.resume_file, state, "resume checkpoint")
    progress["state"] = state


def finish(run, progress, train_photos, val_photos):
    """The run's end, on rank 0: the calibration and operating point (from the kept epoch's validation logits, or
    the folds' out-of-fold ones), the network deployed and its familiarity measure, the card, then the model file,
    written once when all of it is there; the resume checkpoint then says the run finished."""
    args = run.args
    labels, logits = val_photos[1], progress["best_logits"]
    if run.pool is not None:
        labels, logits = run.pool[1], folds.out_of_fold(progress["done"], run.stages, "logits", len(run.pool[1]))
    _, kept = scored(np.asarray(labels), logits, run.meta, args.target_sensitivity)
    net, deployed = deployed_network(run, progress)
    measured_on, others = folds.familiarity_photos(run, train_photos, val_photos)
    found, arrays = folds.deployed_familiarity(run, progress, net, measured_on, others)
    state = model_file.checkpoint_state(net, run.cfg, familiarity=found, **run.meta, **deployed, **kept)
    state["familiarity"] = familiarity.state(arrays)
    print(f"familiarity: {familiarity.limit_text(found, card.chosen_on(state['meta'])[1])}")
    model_file.write_finished(state, args.output, args.card)
    interrupts.say_on_ctrl_c(f"interrupted after {messages.printable(args.output)} and its card were written")
    progress["state"].update(finished=True, done=list(progress["done"]))  # --resume says so; the last fold kept
    model_file.save_checkpoint(args.resume_file, progress["state"], "resume checkpoint")
    training.report(args.output, args.card, state["meta"])


def deployed_network(run, progress):
    """(the network the model file keeps, what its meta says of it): the kept epoch's; the refit; or the folds'
    networks averaged (skinlesion/ensemble.py)."""
    args, done = run.args, progress["done"]
    if run.pool is None or args.deploy == "refit":
        run.net.load_state_dict(progress["best_state_dict"])
    if run.pool is None:
        return run.net, dict(epoch=progress["best_epoch"])
    about = dict(k=args.folds, photos=len(run.pool[0]), deployed=args.deploy, epochs=[e["epoch"] for e in done])
    if args.deploy == "refit":
        return run.net, dict(epoch=progress["epoch"], folds=dict(about, refit_epochs=progress["epoch"]))
    net = ensemble.from_weights(args.model_name, len(run.meta["classes"]), [entry["weights"] for entry in done])
    return model.prepare_for_device(net, run.device).eval(), dict(epoch=folds.refit_epochs(done), members=args.folds,
                                                                   folds=about)  # fmt: skip


if __name__ == "__main__":
    sys.exit(interrupts.run_script(main))  # a Ctrl-C says what main told interrupts.say_on_ctrl_c
