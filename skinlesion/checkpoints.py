"""Why a model file could not be read, in one line: an ONNX file passed as a checkpoint, a pickle that would run
code, a file written by another torch, a truncated file. (What a readable file must hold: model.py's KEYS.)"""

import os
import re
import zipfile

from skinlesion.cli import die, printable


def is_onnx_file(path):
    try:
        import onnx

        return len(onnx.load(path, load_external_data=False).graph.node) > 0
    except Exception:
        return False


def writer_torch(path):
    """The torch version a checkpoint says wrote it (from its metadata, read as bytes), or None."""
    with open(path, "rb") as f:
        found = re.search(rb"versions.{0,40}?torch.{1,12}?(\d+\.\d+\.\d+(?:\+\w+)?)", f.read(1 << 20), re.S)
    return found.group(1).decode() if found else None


def load_failure(path, error):
    """Why torch.load could not read path, as one error line."""
    import torch

    if is_onnx_file(path):
        die(f"{printable(path)} is an ONNX model, not a PyTorch checkpoint; pass the .pth file AItraining.py wrote")
    if "weights_only" in str(error) or "Unpickl" in type(error).__name__:
        die(
            f"refusing to load {printable(path)}: it contains Python objects that could run code (only weights are "
            "accepted)"
        )
    wrote = writer_torch(path)
    if wrote and wrote.split("+")[0] != torch.__version__.split("+")[0]:
        die(
            f"{printable(path)} was written by torch {wrote}, which this torch {torch.__version__} cannot read; "
            f"install {wrote}"
        )
    die(
        f"{printable(path)} is not a readable checkpoint ({type(error).__name__}); it may be truncated, retrain or "
        "copy it again"
    )


def is_onnx(path):
    """By name or by content (a PyTorch checkpoint is a zip file; an ONNX file renamed .pth is not)."""
    if path.lower().endswith(".onnx"):
        return True
    return os.path.isfile(path) and not zipfile.is_zipfile(path) and is_onnx_file(path)
