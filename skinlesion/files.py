"""Safe operations on single files. A script writes only what it made, where it was told: an output is never one
of its inputs nor one of the project's own files, and an existing file is replaced without --overwrite only when
the ledger proves a script of ours wrote exactly that content there, as the same kind of output (ledger.py).
Writes are atomic: a crash, a kill, a full disk or Ctrl-C never leaves a half-written file where a good one was.
(Folders: folders.py.)"""

import os
import re

from skinlesion import interrupts, ledger, reading
from skinlesion.messages import UserError, printable

TAG = "written by skin-lesion-classifier"  # inside files we write (PNG text, JSON key, model metadata): no proof
TAG_BYTES = TAG.encode()
ROOT = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))  # the project folder
ROOT_FILES = {"Makefile", "README.md", "DEVELOPERS.md", "LICENSE", "pyproject.toml", "requirements.txt",
              "requirements-dev.txt", "package.json", "package-lock.json", ".gitignore"}  # fmt: skip
ROOT_FOLDERS = ["skinlesion", "web", "tests", "docs", ".git", ".ci", ".venv", "node_modules"]  # never outputs


def file_kind(path):
    """None for a regular file (or a link to one), else what it is: a photo or a table is read only from a
    regular file (opening a named pipe would wait forever)."""
    try:
        return reading.what_it_is(os.stat(path).st_mode)
    except OSError:
        return "missing"


def file_sha256(path):
    """The SHA-256 of a regular file (reading.open_regular: a named pipe or a device is refused, not read)."""
    import hashlib

    with reading.open_regular(path) as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def same_file(a, b):
    """Whether two paths name one file (after links), also when one of them does not exist yet."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def has_earlier_tag(path):
    """Whether TAG (what earlier versions took as proof) is in the file's first or last 64 KB: only to say, when
    a file has no record, that an earlier version may have written it."""
    if file_kind(path):
        return False
    with reading.open_regular(path) as f:
        head = f.read(1 << 16)
        f.seek(max(0, os.fstat(f.fileno()).st_size - (1 << 16)))
        tail = f.read()
    return any(tag in head or tag in tail for tag in (TAG_BYTES, b"model_name", b"source_sha256"))


def project_file(path):
    """Whether path is one of the project's own files (a script, the package, the page, the tests, the docs...),
    which no script ever writes, whatever the flags."""
    real = os.path.realpath(path)
    folder, name = os.path.split(real)
    if folder == ROOT:
        return name.endswith(".py") or name in ROOT_FILES
    for inside in ROOT_FOLDERS:
        own = os.path.realpath(os.path.join(ROOT, inside))
        if os.path.commonpath([real, own]) == own:
            return True
    return False


def check_output(path, flag, kind, inputs=(), overwrite=False):
    """Before any work, die unless path may be written as kind: it is not one of the project's own files, none of
    the inputs (the same file after links), and an existing file there holds exactly what a script of ours wrote
    at that path as kind (the ledger says so), or overwrite says replace it."""
    if project_file(path):
        raise UserError(f"{flag} {printable(path)} is one of this project's own files; pass another path")
    for given in inputs:
        if given and os.path.exists(given) and same_file(path, given):
            raise UserError(f"{flag} {printable(path)} is also an input ({printable(given)}); pass another path")
    if not os.path.lexists(path) or os.path.isdir(path) or overwrite:
        return
    why = ledger.why_not_ours(path, kind)
    fix = "pass another path, or --overwrite to replace it"
    if why == "no record" and has_earlier_tag(path):
        earlier = "files of versions before the record have none"
        raise UserError(f"{flag} {printable(path)} exists with no record that this project wrote it ({earlier}); {fix}")
    if why == "no record":
        raise UserError(f"{flag} {printable(path)} exists and was not written by this project; {fix}")
    if why == "changed":
        raise UserError(f"{flag} {printable(path)} was changed since this project wrote it; {fix}")
    if why:
        raise UserError(f"{flag} {printable(path)} holds this project's {why} (this output is its {kind}); {fix}")


def remove_leftover_temporaries(path):
    """Remove <path>.tmp<pid> files whose record says a run of ours was writing them there and that run is over;
    any other file of that name is left alone and named in one line."""
    folder, name = ledger.where(path)
    if not os.path.isdir(folder):
        return
    pending = ledger.read(folder)["pending"]
    for entry in sorted(os.listdir(folder)):
        if not re.fullmatch(re.escape(name) + r"\.tmp\d+", entry):
            continue
        full = os.path.join(folder, entry)
        if entry in pending and ledger.run_is_over(pending[entry]) and not os.path.islink(full):
            os.remove(full)
            ledger.forget(full)
        elif entry not in pending:
            print(f"left {printable(full)} alone: no record says a run of ours left it")


def atomic_write(path, write, kind):
    """write(temporary path) beside path, then rename it over path: a crash, a kill or a full disk never
    leaves a half-written file where a good one was. The ledger then records path as kind (None: a file that is
    not an output, such as docs/flags.md, is not recorded). A failed write is one line naming the file."""
    tmp, pending = f"{path}.tmp{os.getpid()}", False
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        remove_leftover_temporaries(path)
        if kind:
            ledger.add_pending(tmp)
            pending = True
        write(tmp)
        interrupts.raise_if_pressed()  # a Ctrl-C a library swallowed still keeps the previous file
        if kind:
            ledger.replace(tmp, path, kind)  # then drops the pending record
            pending = False
        else:
            os.replace(tmp, path)
    except OSError as e:
        raise UserError(
            f"could not write {printable(path)} ({e.strerror or e}); free some disk space or pass another path"
        ) from None
    except RuntimeError as e:  # torch.save's writer on a full disk: '[enforce fail at inline_container.cc:672] ...'
        if "inline_container" not in str(e) and "PytorchStreamWriter" not in str(e):
            raise
        said = str(e).strip().splitlines()[0]
        raise UserError(
            f"could not write {printable(path)} (torch.save: {said}); free some disk space or pass another path"
        ) from None
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)
        if pending:
            ledger.forget(tmp)


def write_text(path, text, kind):
    def write(tmp):
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)

    atomic_write(path, write, kind)


FORMULA = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet runs a cell that starts so: quote it


def csv_cell(text):
    """A CSV value a spreadsheet shows as text: one that starts like a formula gets a leading apostrophe."""
    return "'" + text if text.startswith(FORMULA) else text
