"""Why a model file could not be read, in one line: an ONNX file passed as a checkpoint, a pickle that would run
code, a file written by another torch, a truncated file. (What a readable file must hold: model.py's KEYS.)"""

import os
import re
import zipfile

from skinlesion import reading
from skinlesion.cli import die, printable

MAX_MODEL_BYTES = 2_000_000_000  # the largest model file read (EfficientNet-B0's: 21 MB; an ONNX file: 2 GB at most)


def unreadable_text(path, error):
    """Why the model file at path was not read (an OSError of reading.open_regular), in words naming it."""
    if isinstance(error, reading.Unreadable):
        return f"model file {error}"
    return f"model file {printable(path)} cannot be read ({error.strerror or error})"


def opened(path):
    """The model file at path opened to read (reading.open_regular: a regular file of at most MAX_MODEL_BYTES,
    checked again once open); dies with one line naming it otherwise."""
    try:
        return reading.open_regular(path, MAX_MODEL_BYTES)
    except OSError as e:
        die(f"{unreadable_text(path, e)}; pass the model file AItraining.py wrote")


def is_onnx_file(path):
    """Whether path is a regular file of at most MAX_MODEL_BYTES that parses as an ONNX graph (its external data,
    if it names any, is never read)."""
    try:
        import onnx

        return len(onnx.load_model_from_string(reading.read_bytes(path, MAX_MODEL_BYTES)).graph.node) > 0
    except Exception:
        return False


def writer_torch(path):
    """The torch version a checkpoint says wrote it (from its metadata, read as bytes), or None."""
    with reading.open_regular(path) as f:
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
