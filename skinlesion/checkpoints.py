"""Why a model file could not be read, in one line: an ONNX file passed as a checkpoint, a pickle that would run
code, a file written by another torch, a truncated file; why one that can be read must not classify (an
unfinished run's); and the one write of a finished run's model file. (What a readable file must hold: model.py's
KEYS.)"""

import os
import re
import zipfile

from skinlesion import reading
from skinlesion.messages import UserError, printable

MAX_MODEL_BYTES = 2_000_000_000  # the largest model file read (EfficientNet-B0's: 21 MB; an ONNX file: 2 GB at most)
FORMAT = 2  # the model file's format (its meta "format"): from 2 a finished run's file always holds its familiarity


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
        raise UserError(f"{unreadable_text(path, e)}; pass the model file AItraining.py wrote") from None


def unfinished_fault(meta):
    """Why a model file whose keys are sound must not classify, or None: from FORMAT 2 a finished run's file always
    holds its familiarity measure, so one without it is a resume checkpoint, or a run's that did not finish (an
    earlier version wrote the model before the measure). Files from before FORMAT 2 keep their behaviour."""
    if meta.get("format", 1) >= 2 and not meta.get("familiarity"):
        return (
            "it has no familiarity measure, which every finished model file of its format holds: it is a resume "
            "checkpoint, or its run did not finish; finish the run with 'python AItraining.py --resume'"
        )
    return None


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
        raise UserError(
            f"{printable(path)} is an ONNX model, not a PyTorch checkpoint; pass the .pth file AItraining.py wrote"
        )
    if "weights_only" in str(error) or "Unpickl" in type(error).__name__:
        raise UserError(
            f"refusing to load {printable(path)}: it contains Python objects that could run code (only weights are "
            "accepted)"
        )
    wrote = writer_torch(path)
    if wrote and wrote.split("+")[0] != torch.__version__.split("+")[0]:
        raise UserError(
            f"{printable(path)} was written by torch {wrote}, which this torch {torch.__version__} cannot read; "
            f"install {wrote}"
        )
    raise UserError(
        f"{printable(path)} is not a readable checkpoint ({type(error).__name__}); it may be truncated, retrain or "
        "copy it again"
    )


def is_onnx(path):
    """By name or by content (a PyTorch checkpoint is a zip file; an ONNX file renamed .pth is not)."""
    if path.lower().endswith(".onnx"):
        return True
    return os.path.isfile(path) and not zipfile.is_zipfile(path) and is_onnx_file(path)


def write_finished(state, path, card_path):
    """Write a finished run's model file once, whole: its card first (card.write_card), naming the SHA-256 of the
    bytes about to be written, then the file atomically (a reader sees it whole or the previous one). A state that
    lacks its familiarity measure, or whose measure does not fit, is never written."""
    import hashlib
    import io

    import torch

    from skinlesion import card, familiarity, files

    fault = unfinished_fault(state["meta"]) or familiarity.arrays_fault(
        state["familiarity"], len(state["meta"]["classes"])
    )
    if fault:
        raise ValueError(f"a model file must not be written so: {fault}")
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    card.write_card(card_path, state["meta"], os.path.basename(path), model_sha256=hashlib.sha256(data).hexdigest())

    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)

    files.atomic_write(path, write, "model")
