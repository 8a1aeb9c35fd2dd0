"""Safe operations on single files. A script writes only what it made, where it was told: an output is never one
of its inputs, and an existing file it did not write is replaced only with --overwrite. Writes are atomic: a
crash, a kill, a full disk or Ctrl-C never leaves a half-written file where a good one was. (Folders: folders.py.)"""

import os
import re
import stat

from skinlesion import interrupts
from skinlesion.cli import die, printable

TAG = "written by skin-lesion-classifier"  # inside every file we write (PNG text, JSON key, model metadata)
TAG_BYTES = TAG.encode()


def file_kind(path):
    """None for a regular file (or a link to one), else what it is: a photo or a table is read only from a
    regular file (opening a named pipe would wait forever)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return "missing"
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    return "a device or socket, not a regular file"


def file_sha256(path):
    import hashlib

    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def same_file(a, b):
    """Whether two paths name one file (after links), also when one of them does not exist yet."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def is_ours(path, header=None, ours=TAG_BYTES):
    """Whether a file was written by this project: TAG (or ours) in its first or last 64 KB (PNG text, JSON,
    model metadata), or its first line equals header (a CSV of ours)."""
    if file_kind(path):
        return False
    with open(path, "rb") as f:
        head = f.read(1 << 16)
        f.seek(max(0, os.fstat(f.fileno()).st_size - (1 << 16)))
        tail = f.read()
    if ours in head or ours in tail:
        return True
    return header is not None and head.split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8", "replace") == header


def check_output(path, flag, inputs=(), overwrite=False, ours=is_ours):
    """Before any work, die unless path may be written: it is none of the inputs (the same file after links),
    and an existing file there was written by us (ours(path) says so), or overwrite says replace it."""
    for given in inputs:
        if given and os.path.exists(given) and same_file(path, given):
            die(f"{flag} {printable(path)} is also an input ({printable(given)}); pass another path")
    if os.path.lexists(path) and not os.path.isdir(path) and not overwrite and not ours(path):
        die(
            f"{flag} {printable(path)} exists and was not written by this project; pass another path, or "
            "--overwrite to replace it"
        )


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # alive, owned by someone else
        pass
    return True


def remove_stale_temporaries(path):
    """Remove <path>.tmp<pid> files left by killed processes (a running process keeps its own)."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        return
    for name in os.listdir(folder):
        match = re.fullmatch(re.escape(os.path.basename(path)) + r"\.tmp(\d+)", name)
        if match and not pid_alive(int(match.group(1))):
            os.remove(os.path.join(folder, name))


def atomic_write(path, write):
    """write(temporary path) beside path, then rename it over path: a crash, a kill or a full disk never
    leaves a half-written file where a good one was. A failed write is one line naming the file."""
    remove_stale_temporaries(path)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        write(tmp)
        interrupts.raise_if_pressed()  # a Ctrl-C a library swallowed still keeps the previous file
        os.replace(tmp, path)
    except OSError as e:
        die(f"could not write {printable(path)} ({e.strerror or e}); free some disk space or pass another path")
    except RuntimeError as e:  # torch.save's writer on a full disk: '[enforce fail at inline_container.cc:672] ...'
        if "inline_container" not in str(e) and "PytorchStreamWriter" not in str(e):
            raise
        said = str(e).strip().splitlines()[0]
        die(f"could not write {printable(path)} (torch.save: {said}); free some disk space or pass another path")
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path, text):
    def write(tmp):
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)

    atomic_write(path, write)
