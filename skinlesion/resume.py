"""A training run's progress and its resume checkpoint (AItraining.py --resume): the epochs done, the best epoch so
far (its weights and validation logits: the model file is written from them once, when the run ends), the epochs
without a better one, the history; what a resume checkpoint holds besides the latest weights and meta, checked
before it is used; and how --resume takes a run back: its settings, on its own dataset (the manifest's SHA-256),
from a checkpoint it reads without --overwrite."""

import json
import math
import os

import numpy as np

from skinlesion import ledger, schema
from skinlesion.flags import flag_name, in_range
from skinlesion.messages import UserError, printable

NUMBER = schema.simple(in_range, "a finite number")
RESUME_STATE = schema.record(dict(  # what AItraining.py --resume reads besides the weights and meta
    optimizer=schema.record({}, others=True), schedule=schema.record({}, others=True), stopped_early=schema.BOOLEAN,
    bad_epochs=schema.whole(0, 10**6), best=schema.list_of(NUMBER, 2), history=schema.text(10**8),
    finished=schema.BOOLEAN, stage=schema.whole(0, 100)))  # fmt: skip
EPOCH_LOG = schema.list_of(  # the history: each epoch's numbers (curves, TensorBoard); a refit has no validation
    schema.record(dict.fromkeys(("epoch", "train_loss", "train_accuracy", "lr", "seconds"), NUMBER),
                  dict.fromkeys(("roc_auc", "val_loss"), NUMBER), others=True))  # fmt: skip
RESUME_KEYS = ["optimizer", "schedule", "best", "bad_epochs", "stopped_early", "history", "finished", "stage"]
RESUME_TENSORS = ["best_state_dict", "best_logits", "done"]  # the best epoch so far; the stages (folds) done
FRESH = dict(epoch=0, best=[-1.0, -math.inf], bad_epochs=0, stopped_early=False, history=[], best_epoch=0,
             best_state_dict=None, best_logits=None)  # fmt: skip  # a stage before its first epoch


def resume_fault(state):
    """What is wrong with a resume checkpoint's training state (optimizer, schedule, best, history...), or None."""
    fault = schema.fault(RESUME_STATE, "training state", {k: state[k] for k in RESUME_KEYS})
    try:
        return fault or schema.fault(EPOCH_LOG, "history", json.loads(state["history"])) or tensors_fault(state)
    except RecursionError:
        return "its history is JSON nested too deeply to read"
    except ValueError:
        return "its history is not JSON"


def tensors_fault(state):
    """What is wrong with the tensors a resume checkpoint keeps (the best epoch's weights like its own and finite
    logits; the folds done; the starting weights of a run with folds), or None."""
    import torch

    weights = set(state["state_dict"])
    found = [("best epoch's weights", state["best_state_dict"]), ("starting weights", state.get("initial", {}))]
    found += [(f"fold {i + 1}'s weights", entry.get("weights", {})) for i, entry in enumerate(state["done"])
              if isinstance(entry, dict)]  # fmt: skip
    for what, kept in found:
        if not isinstance(kept, dict) or (kept and set(kept) != weights):
            return f"its {what} are not those of its network"
        if not all(torch.is_tensor(v) and (not v.is_floating_point() or v.isfinite().all()) for v in kept.values()):
            return f"its {what} are not finite tensors"
    tables = [("best epoch's validation logits", state["best_logits"], 2)]
    if not isinstance(state["done"], list):
        return "its folds done are not a list"
    for i, entry in enumerate(state["done"]):
        if not (isinstance(entry, dict) and isinstance(entry.get("epoch"), int) and entry["epoch"] >= 1):
            return f"its fold {i + 1} has no best epoch"
        tables += [(f"fold {i + 1}'s {key}", entry.get(key), n) for key, n in (("logits", 2), ("distances", 1))]
        tables += [
            (f"fold {i + 1}'s {key}", entry[key], 1) for key in ("member_distances", "member_head") if key in entry
        ]
    for what, table, n in tables:
        if not (torch.is_tensor(table) and table.ndim == n and table.isfinite().all()):
            return f"its {what} are not a finite table"
    faults = (entry_fault(entry, i, entry["logits"].shape[1]) for i, entry in enumerate(state["done"]))
    return next(filter(None, faults), None)


def entry_fault(entry, i, n_classes):
    """What is wrong with what fold i keeps of its familiarity measure besides its distances: what its exposure head
    learned from ({what: how many}), an ensemble member's measure for n_classes (familiarity.arrays_fault); or
    None."""
    from skinlesion import familiarity

    fault = "exposed_to" in entry and schema.fault(schema.table_of(schema.COUNT), f"fold {i + 1}'s exposed_to",
                                                   entry["exposed_to"])  # fmt: skip
    if fault:
        return fault
    fault = "member" in entry and familiarity.arrays_fault(entry["member"], n_classes)
    return f"its fold {i + 1}'s member measure is refused: {fault}" if fault else None


def progress_of(resumed):
    """Where a run stands: its stage (one split; or a fold, the refit), the folds done (their best epochs,
    out-of-fold logits and familiarity distances, and for an ensemble their weights) and, of the stage it is in,
    the epochs done, the best so far (ROC-AUC, -validation loss) with its epoch, weights and validation logits, the
    epochs without a better one, the history. A new run, or the resumed one's (its resume checkpoint)."""
    if resumed is None:
        return dict(FRESH, stage=0, done=[], initial=None, state=None, history=[])
    history = json.loads(resumed["history"])
    best = max(history, key=lambda h: (h.get("roc_auc", 0), -h.get("val_loss", 0), h["epoch"]))  # refit: the last
    found = {key: resumed[key] for key in ("best", "bad_epochs", "stopped_early", "optimizer", "schedule", "stage")}
    found.update(best_state_dict=resumed["best_state_dict"], best_logits=resumed["best_logits"].double().numpy())
    found.update(done=resumed["done"], initial=resumed.get("initial"), state=resumed)
    return dict(found, epoch=resumed["meta"]["epoch"], history=history, best_epoch=int(best["epoch"]))


def is_complete(progress, epochs, go_on_after_a_stop=False):
    """Whether the stage progress is in has no epoch left: all done, or an early stop the run is not told to go on
    from (a higher --patience)."""
    return progress["epoch"] >= epochs or (progress["stopped_early"] and not go_on_after_a_stop)


def next_stage(progress, index):
    """progress at the start of stage index (a fold, the refit): its epochs, best and history anew."""
    progress.update(FRESH, stage=index, history=[])
    for key in ("optimizer", "schedule"):
        progress.pop(key, None)


def record_epoch(progress, found, net, logits, patience):
    """Add an epoch's numbers (found) to progress; where it is the best so far, keep its weights (a copy, on the
    CPU) and validation logits. Whether it was. An epoch without validation (the refit) is kept: the latest."""
    improved = "roc_auc" not in found or [found["roc_auc"], -found["val_loss"]] > progress["best"]  # a tie: the loss
    if improved:
        weights = getattr(net, "module", net).state_dict()
        progress.update(best=[found.get("roc_auc", -1.0), -found.get("val_loss", 0.0)], bad_epochs=0)
        progress.update(best_state_dict={k: v.detach().cpu().clone() for k, v in weights.items()}, best_logits=logits)
        progress["best_epoch"] = found["epoch"]
    else:
        progress["bad_epochs"] += 1
    progress["stopped_early"] = bool(patience) and progress["bad_epochs"] >= patience
    progress["history"].append(found)
    progress["epoch"] = found["epoch"]
    return improved


def resume_state(progress, finished=False):
    """What a resume checkpoint holds besides the latest weights and meta (RESUME_KEYS, RESUME_TENSORS, and the
    starting weights of a run with folds)."""
    import torch

    kept = {key: progress[key] for key in ("optimizer", "schedule", "best", "bad_epochs", "stopped_early", "stage")}
    logits = torch.as_tensor(np.asarray(progress["best_logits"], dtype=np.float64))
    kept.update(history=json.dumps(progress["history"]), finished=finished, done=list(progress["done"]))
    if progress.get("initial") is not None:
        kept["initial"] = progress["initial"]
    return dict(kept, best_state_dict=progress["best_state_dict"], best_logits=logits)


def continued_in(path, overwrite=False):
    """Where a run resumed from the checkpoint at path writes its own: path itself where the ledger proves this
    project wrote it there (or overwrite says so), else beside it (copy.pth -> copy.resumed.pth): a copy is an input,
    left as it is; one resumed from there is ours and continues in it."""
    if overwrite or not os.path.isfile(path) or ledger.why_not_ours(path, "resume checkpoint") is None:
        return path
    stem, extension = os.path.splitext(path)
    return f"{stem}.resumed{extension or '.pth'}"


def take_back(state, args, classes, manifest_sha256, defaults=("skin_model_last.pth", "skin_model.pth")):
    """A resume checkpoint's state (read and checked as a model file: model_file.read_checkpoint), checked as one and
    its settings put into args (AItraining.py's: resume_from, data_dir, given): a flag that would change the run
    dies, and so do other classes and another dataset (a manifest.csv of another SHA-256). defaults: the resume
    file and the model a run writes, for the advice."""
    resume_from = printable(args.resume_from)
    missing = [key for key in RESUME_KEYS + RESUME_TENSORS if key not in state]
    missing += [k for k in ("settings", "epoch") if k not in state["meta"]]
    if "optimizer" in missing or "settings" in missing:
        raise UserError(
            f"--resume: {resume_from} has no optimiser state ({', '.join(missing)}); resume from the "
            f"{defaults[0]} a run writes (--resume-file), not from {defaults[1]}"
        )
    if missing:
        raise UserError(
            f"--resume: {resume_from} was written by an earlier AItraining.py (no {missing[0]}); start a new run"
        )
    fault = resume_fault(state)
    if fault:
        raise UserError(f"--resume: {resume_from} is refused: {fault}; start a new run")
    if state["meta"]["classes"] != classes:
        raise UserError(
            f"--resume: the run in {resume_from} trained classes {state['meta']['classes']}, "
            f"{printable(args.data_dir)} has {classes}; start a new run"
        )
    trained_on = state["meta"].get("manifest_sha256")
    if trained_on != manifest_sha256:
        said = [f"SHA-256 {sha[:12]}" if sha else "none" for sha in (trained_on, manifest_sha256)]
        raise UserError(
            f"--resume: the run in {resume_from} trained on another dataset (its manifest.csv: {said[0]}; "
            f"{printable(args.data_dir)}'s: {said[1]}); pass the --data-dir it trained on, or start a new run"
        )
    restore_settings(args, state)
    return state


def restore_settings(args, state):
    """Put the resumed run's settings into args (a flag given that would change the run dies: with folds --epochs
    too, but --deploy may change, the folds being the same); die when there is nothing left to do."""
    settings, done, resume_from = state["meta"]["settings"], state["meta"]["epoch"], printable(args.resume_from)
    folds = settings.get("folds", 1)
    changeable = ("epochs", "patience") if folds == 1 else ("patience", "deploy")
    for key, value in settings.items():
        if key in args.given and getattr(args, key) != value and key not in changeable:
            raise UserError(
                f"--resume: the run in {resume_from} has {key} {value}; resume without "
                f"{flag_name(key)} or start a new run"
            )
        setattr(args, key, getattr(args, key) if key in args.given else value)
    if folds > 1 and args.deploy == "ensemble" and any("weights" not in entry for entry in state["done"]):
        raise UserError(
            f"--resume --deploy ensemble: the run in {resume_from} kept no fold networks (it deploys refit); "
            "start a new run with --deploy ensemble"
        )
    if state["finished"] and folds > 1 and args.deploy == settings["deploy"]:
        other = "ensemble" if args.deploy == "refit" else "refit"
        raise UserError(
            f"--resume: the run in {resume_from} already finished ({folds} folds of {settings['epochs']} "
            f"epochs, deployed: {args.deploy}); to deploy its folds the other way pass --deploy {other} and another "
            "--output, or start a new run"
        )
    if state["finished"] and folds == 1 and done >= args.epochs:
        raise UserError(
            f"--resume: the run in {resume_from} already finished ({done} of {settings['epochs']} epochs); "
            f"to train longer pass a higher --epochs, e.g. --epochs {done + 10}"
        )
    if state["finished"] and folds == 1 and state["stopped_early"] and "patience" not in args.given:
        raise UserError(
            f"--resume: the run in {resume_from} stopped early at epoch {done} (no better validation "
            f"ROC-AUC for {args.patience} epochs); to go on pass --patience 0 (never stop) or a higher --patience"
        )


def say_where_it_resumes(args, only_finishes, log):
    """Say where a resumed run's checkpoints go (beside a copy it read; args: AItraining.py's), and that it only
    finishes where its epochs are done."""
    if args.resume_file != args.resume_from:
        log(
            f"resuming from {printable(args.resume_from)}, left as it is (no record that this project wrote it "
            f"there): this run's checkpoints go to {printable(args.resume_file)}"
        )
    if only_finishes:
        log(
            f"resuming from {printable(args.resume_from)}: its epochs are done; finishing it (calibration, "
            "familiarity, card, model file)"
        )
