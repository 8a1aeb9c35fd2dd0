"""Folders we make carry our mark (MARK inside) and are the only ones replaced or removed: a folder is rebuilt
beside the old one and swapped in when the run succeeds, one run at a time (a lock), and what killed runs left
is cleaned up. An output folder never holds an input."""

import contextlib
import os
import re
import shutil

from skinlesion import interrupts
from skinlesion.cli import die, first_few, printable
from skinlesion.files import is_ours, pid_alive

MARK = ".skin-lesion-classifier"  # a file inside every folder we make, naming the script that made it


def is_within(path, folder):
    """Whether path is folder or lies inside it, after links."""
    folder = os.path.realpath(folder)
    return os.path.commonpath([os.path.realpath(path), folder]) == folder


def check_output_folder(path, flag, inputs=()):
    """die when an output folder (replaced as a whole) holds one of the inputs."""
    for given in inputs:
        if given and is_within(given, path):
            die(f"{flag} {printable(path)}: use a folder that does not hold {printable(given)}")


def check_outside(path, flag, input_folders):
    """die when an output folder lies inside one of the input folders (the same after links)."""
    for folder in input_folders:
        if is_within(path, folder):
            die(f"{flag} {printable(path)}: use a folder outside {printable(folder)} (an input)")


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
        interrupts.raise_if_pressed()  # a Ctrl-C a library swallowed still keeps the previous folder
        if os.path.lexists(path):
            os.rename(path, old)
        os.rename(tmp, path)
        interrupts.say_on_ctrl_c(f"interrupted; {printable(path)} is already the new one, complete")
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
