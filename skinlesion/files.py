"""Safe file operations: what kind of file a path is, hashes, atomic writes (a crash, a kill or a full disk never
leaves a half-written file where a good one was), and a folder replaced as a whole, one run at a time."""

import contextlib
import glob
import os
import re
import shutil
import stat

from skinlesion.cli import die, printable


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


@contextlib.contextmanager
def replaced_folder(path, script):
    """with replaced_folder(path, script) as tmp: the block writes a new folder tmp (path.tmp-<pid>), which
    replaces path when the block ends without an error; an error, a kill or Ctrl-C leave path as it was. One run
    per parent folder (an exclusive flock): a second dies with one line. Leftovers of killed runs are removed
    once the lock is held; a swap cut short between its two renames is put back."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp, old = f"{path}.tmp-{os.getpid()}", f"{path}.old-{os.getpid()}"
    lock = lock_folder(folder, script)
    try:
        for left in sorted(glob.glob(glob.escape(path) + ".old-*")):
            if os.path.lexists(path):
                shutil.rmtree(left)
            else:
                os.rename(left, path)
                print(f"restored {path} from {left}, left by a run killed while swapping")
        for left in glob.glob(glob.escape(path) + ".tmp-*"):
            pid = left.rsplit("-", 1)[1]
            if pid.isdigit() and (lock is not None or not pid_alive(int(pid))):
                shutil.rmtree(left)
        os.makedirs(tmp)
        yield tmp
        if os.path.lexists(path):
            os.rename(path, old)
        os.rename(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if lock is not None:
            os.close(lock)
