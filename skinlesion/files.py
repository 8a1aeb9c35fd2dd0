"""Safe file operations. A script writes only what it made, where it was told: an output is never one of its
inputs, an existing file it did not write is replaced only with --overwrite, a folder is replaced as a whole
only if it carries our mark. Writes are atomic (a crash, a kill or a full disk never leaves a half-written
file where a good one was), and a folder is rebuilt beside the old one and swapped in, one run at a time."""

import contextlib
import os
import re
import shutil
import stat

from skinlesion.cli import die, first_few, printable

TAG = "written by skin-lesion-classifier"  # inside every file we write (PNG text, JSON key, model metadata)
TAG_BYTES = TAG.encode()
MARK = ".skin-lesion-classifier"  # a file inside every folder we make, naming the script that made it


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


def check_output_folder(path, flag, inputs=()):
    """die when an output folder (replaced as a whole) holds one of the inputs."""
    out = os.path.realpath(path)
    for given in inputs:
        if given and os.path.commonpath([os.path.realpath(given), out]) == out:
            die(f"{flag} {printable(path)}: use a folder that does not hold {printable(given)}")


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
        os.replace(tmp, path)
    except OSError as e:
        die(f"could not write {printable(path)} ({e.strerror or e}); free some disk space or pass another path")
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path, text):
    def write(tmp):
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)

    atomic_write(path, write)


def lock_folder(folder, script):
    """An exclusive flock on folder (where the system has one), as an open descriptor, or None where locks are
    not available; a second holder dies with one line."""
    try:
        import fcntl  # not on Windows
    except ImportError:
        return None
    try:
        lock = os.open(folder, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(lock)
        die(f"another {script} run is writing in {printable(folder)}; wait for it to finish")
    except OSError:  # a file system without locks: run unlocked
        os.close(lock)
        return None
    return lock


def is_our_folder(path, legacy=None):
    """Whether a folder carries our mark (MARK inside it), or legacy(path) says an earlier version made it."""
    return os.path.isfile(os.path.join(path, MARK)) or bool(legacy and legacy(path))


def check_replaceable(path, flag, script, legacy=None):
    """die unless the folder at path may be replaced as a whole: missing, empty, or ours (never a link)."""
    path = os.path.normpath(path)  # 'link/' is the link itself, not what it points to
    if os.path.islink(path):
        points_to = printable(os.path.realpath(path))
        die(f"{flag} {printable(path)} is a symbolic link; pass the folder it points to ({points_to}), or a new folder")
    if not os.path.lexists(path):
        return
    if not os.path.isdir(path):
        die(f"{flag} {printable(path)}: use a folder, not a file")
    found = sorted(os.listdir(path))
    if found and not is_our_folder(path, legacy):
        hint = "pass a new or empty folder: it is replaced as a whole"
        die(f"{flag} {printable(path)} holds files that {script} did not make ({first_few(found)}); {hint}")


def leftovers(path, suffix):
    """Folders <path>.<suffix>-<pid> that carry our mark, with their pid: what killed runs left."""
    folder, name = os.path.split(os.path.abspath(path))
    found = []
    for entry in sorted(os.listdir(folder)):
        match = re.fullmatch(re.escape(name) + r"\." + suffix + r"-(\d+)", entry)
        full = os.path.join(folder, entry)
        if match and not os.path.islink(full) and os.path.isdir(full) and is_our_folder(full):
            found.append((full, int(match.group(1))))
    return found


@contextlib.contextmanager
def replaced_folder(path, script, legacy=None):
    """with replaced_folder(path, script) as tmp: the block writes a new folder tmp (path.tmp-<pid>, marked as
    ours), which replaces path when the block ends without an error; an error, a kill or Ctrl-C leave path as
    it was. check_replaceable(path) must have passed. One run per parent folder (an exclusive flock): a second
    dies with one line. Leftovers of killed runs (marked, named with a pid) are removed once the lock is held;
    a swap cut short between its two renames is put back. Nothing without our mark is ever removed."""
    path = os.path.normpath(path)
    folder = os.path.dirname(os.path.abspath(path))
    tmp, old = f"{path}.tmp-{os.getpid()}", f"{path}.old-{os.getpid()}"
    os.makedirs(folder, exist_ok=True)  # a new folder's parent, e.g. --dataset-dir runs/first/dataset
    lock = lock_folder(folder, script)
    try:
        for left, _ in leftovers(path, "old"):
            if os.path.lexists(path):
                shutil.rmtree(left)
            else:
                os.rename(left, path)
                print(f"restored {path} from {left}, left by a {script} run killed while swapping")
        for left, pid in leftovers(path, "tmp"):
            if lock is not None or not pid_alive(pid):
                shutil.rmtree(left)
        os.makedirs(tmp)
        with open(os.path.join(tmp, MARK), "w", encoding="utf-8") as f:
            f.write(f"made by {script}; replaced as a whole by its next run\n")
        yield tmp
        if os.path.lexists(path):
            os.rename(path, old)
        os.rename(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if lock is not None:
            os.close(lock)


def remove_ours(paths):
    """Remove what this project made among paths: a marked folder as a whole, a file we wrote (TAG inside, or a
    model file any version wrote), then a folder left empty; everything else stays. Says what it removed."""
    removed = []
    for path in paths:
        if os.path.islink(path) or not os.path.exists(path):
            continue
        if os.path.isdir(path) and is_our_folder(path):
            shutil.rmtree(path)
        elif os.path.isdir(path):
            remove_ours([os.path.join(path, name) for name in sorted(os.listdir(path))])
            if os.listdir(path):
                continue
            os.rmdir(path)
        elif is_ours(path) or is_ours(path, ours=b"model_name"):
            os.remove(path)
        else:
            continue
        print(f"removed {printable(path)}")
        removed.append(path)
    return removed


def made_folder(path, script):
    """Make the folder at path, marked as ours, unless it exists (then it stays as it is)."""
    if not os.path.isdir(path):
        os.makedirs(path)
        with open(os.path.join(path, MARK), "w", encoding="utf-8") as f:
            f.write(f"made by {script}\n")
