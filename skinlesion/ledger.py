"""The one record of what we wrote: a script replaces or removes only what this record proves it wrote, never a
file because of bytes inside it (any file can contain them). Each folder we write in holds a ledger, NAME (JSON):
  path     the folder's own real path: a ledger copied or moved with its folder proves nothing there
  files    per file we wrote (a name, or a path inside a folder made as a whole): kind (a model, a resume checkpoint,
           predictions...), size, sha256, mtime_ns, script
  pending  per temporary file a run is writing: the run (a killed run's is removed only once that run is over)
  made     for a folder a script made (a dataset, the demo export, the site, a log folder): kind, script, run
  leftover per folder a run put beside its path (path.tmp-<pid>, path.old-<pid>): that path and the run, so that
           only the run's own leftovers are removed or restored once it is over. A run is its pid, its start time
           (pids are re-used), the host and a random token. Changes are made under a lock (flock), atomically."""

import contextlib
import hashlib
import json
import os
import secrets
import socket
import sys

from skinlesion import reading
from skinlesion.messages import UserError, printable

NAME = ".skin-lesion-classifier"  # the ledger (and mark) inside every folder we write in
TEMPORARY = NAME + ".new"  # the ledger being written (write): left by a kill before the rename, it is ours
FORMAT = 1
MAX_BYTES = 256_000_000  # the largest record read (a dataset of 400,000 photos records about 70 MB)
_RUNS = {}  # pid -> this process's run (a forked worker is a process of its own)


def process_start(pid):
    """When process pid started, as text that differs for a re-used pid (Linux: boot id and start tick), or None
    where the system does not say."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open("/proc/sys/kernel/random/boot_id", encoding="utf-8") as f:
            boot = f.read().strip()
    except (OSError, IndexError):
        return None
    return f"{boot}:{fields[19]}"


def this_run():
    """This process as a run: pid, start time, host and a random token."""
    pid = os.getpid()
    if pid not in _RUNS:
        started = process_start(pid)
        _RUNS[pid] = dict(pid=pid, started=started, host=socket.gethostname(), token=secrets.token_hex(8))
    return _RUNS[pid]


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # alive, owned by someone else
        pass
    return True


def run_is_over(run):
    """Whether a recorded run has ended: on this host, its pid is gone or now names a process that started at
    another time. A run of another host, or one whose end cannot be proven, is not over."""
    if not isinstance(run, dict) or run.get("host") != socket.gethostname():
        return False
    pid = run.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or not 0 < pid < 2**31:
        return False
    if not pid_alive(pid):
        return True
    started = process_start(pid)
    return started is not None and started != run.get("started")


def record_fault(folder):
    """Why the record in folder cannot be read (it is not a regular file: a named pipe, a link to /dev/zero, a
    folder; or it is over MAX_BYTES), as a phrase naming it, or None (a regular file of a fitting size, or none)."""
    path = os.path.join(folder, NAME)
    try:
        info = os.lstat(path)
    except OSError:
        return None
    kind = reading.what_it_is(info.st_mode)
    if kind:
        return f"{printable(path)} is {kind}, not a record this project wrote"
    if info.st_size > MAX_BYTES:
        return f"{printable(path)} is {info.st_size:,} bytes, more than a record this project writes"
    return None


def die_of_fault(fault):
    raise UserError(
        f"{fault}; move it out of the way (the scripts keep their record of what they wrote in a folder under {NAME})"
    )


def read_raw(folder):
    """The ledger in folder as it is (a dict), or None: missing, unreadable, not JSON, or not one of ours. A record
    that is not a regular file, is too large or nested too deeply dies with one line naming it: it is never opened
    (a named pipe would block for ever) nor read without a bound (a link to /dev/zero)."""
    fault = record_fault(folder)
    if fault:
        die_of_fault(fault)
    try:
        data = json.loads(reading.read_bytes(os.path.join(folder, NAME), MAX_BYTES, follow_links=False))
    except reading.Unreadable as e:  # it changed since record_fault looked
        die_of_fault(str(e))
    except RecursionError:
        die_of_fault(f"{printable(os.path.join(folder, NAME))} is JSON nested too deeply to read")
    except (OSError, ValueError):  # not JSON: an earlier version's mark (text), or damaged
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return None
    for key in ("files", "pending"):
        if not isinstance(data.get(key), dict):
            data[key] = {}
    return data


def read(folder):
    """The ledger of folder: its records only if it names folder's real path (else an empty one)."""
    path = os.path.realpath(folder)
    data = read_raw(folder)
    if data is None or data.get("path") != path:
        return dict(format=FORMAT, path=path, files={}, pending={})
    return data


def _locked(path):
    """An exclusive flock on the ledger file path (created if missing), as an open descriptor, or None where the
    system has no locks. The ledger is replaced by a rename: the lock is taken again until it holds the file
    that is there now. A record that is not a regular file dies with one line (record_fault)."""
    try:
        import fcntl  # not on Windows
    except ImportError:
        return None
    while True:
        fault = record_fault(os.path.dirname(path))
        if fault:
            die_of_fault(fault)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | reading.NO_WAIT | reading.NO_LINK, 0o644)
        if reading.what_it_is(os.fstat(fd).st_mode):  # it changed since record_fault looked
            os.close(fd)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # a file system without locks
            os.close(fd)
            return None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except OSError:
            same = False
        if same:
            return fd
        os.close(fd)


@contextlib.contextmanager
def updated(folder):
    """with updated(folder) as ledger: change the dict; it is written back atomically when the block ends without
    an error (and removed when it records nothing), one process at a time."""
    path = os.path.join(folder, NAME)
    lock = _locked(path)
    try:
        data = read(folder)
        yield data
        write(folder, data)
    finally:
        if not record_fault(folder) and os.path.lexists(path) and os.lstat(path).st_size == 0:  # made for the lock
            os.remove(path)
        if lock is not None:
            os.close(lock)


def write(folder, data):
    """Write the ledger of folder atomically (removed when it records nothing); updated() is the locked way. It is
    written into TEMPORARY first: one left there by a kill is ours and replaced (a regular file at that name: only
    this function writes it); anything else there dies with one line naming it."""
    path = os.path.join(folder, NAME)
    if data["files"] or data["pending"] or data.get("made") or data.get("leftover"):
        remove_temporary(folder)
        new, made = os.path.join(folder, TEMPORARY), False
        try:
            fd = os.open(new, os.O_WRONLY | os.O_CREAT | os.O_EXCL | reading.NO_LINK, 0o644)
            made = True
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, separators=(",", ":"))
            os.replace(new, path)
            made = False
        finally:  # a full disk: the previous record stays, and no half-written one is left beside it
            if made:
                os.remove(new)
    elif os.path.lexists(path):
        os.remove(path)


def remove_temporary(folder):
    """Remove TEMPORARY, the record's own temporary, where a kill left it (a regular file, not a link); anything
    else of that name dies with one line naming it."""
    new = os.path.join(folder, TEMPORARY)
    try:
        kind = reading.what_it_is(os.lstat(new).st_mode)
    except FileNotFoundError:
        return
    if kind:
        raise UserError(
            f"{printable(new)} is {kind}, not the temporary record this project writes there; move it out of the way"
        )
    os.remove(new)


def is_own(name):
    """Whether a file name in a folder is the record's (NAME) or its temporary's (TEMPORARY): no output."""
    return name in (NAME, TEMPORARY)


def where(path):
    """(the real path of the folder path is in, its name there): where its record is kept. A link as path is the
    link itself (a write replaces the link, not what it points to)."""
    return os.path.realpath(os.path.dirname(os.path.abspath(path))), os.path.basename(os.path.abspath(path))


def file_record(path, kind):
    """What we record of a file we wrote: kind, size, sha256, mtime_ns and the script."""
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
        st = os.fstat(f.fileno())
    script = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"
    return dict(kind=kind, size=st.st_size, sha256=digest, mtime_ns=st.st_mtime_ns, script=script)


def recorded(path):
    """The record of the file at path in its folder's ledger, or None."""
    folder, name = where(path)
    return read(folder)["files"].get(name)


def why_not_ours(path, kind=None):
    """None when path is a regular file (not a link) whose content is exactly what a script of ours wrote at that
    path as kind (any kind when None), else why not: 'no record', 'changed' or the kind it was written as."""
    if os.path.islink(path) or not os.path.isfile(path):
        return "no record"
    record = recorded(path)
    if not isinstance(record, dict):
        return "no record"
    written = [record, record.get("previous")]  # previous: what it replaced (a kill may come before the rename)
    sizes = [item.get("size") for item in written if isinstance(item, dict)]
    with reading.open_regular(path, follow_links=False) as f:
        if os.fstat(f.fileno()).st_size not in sizes:
            return "changed"
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    if not any(isinstance(item, dict) and item.get("sha256") == digest for item in written):
        return "changed"
    if kind is not None and record.get("kind") != kind:
        return str(record.get("kind"))
    return None


def add_pending(path):
    """Record that this run is writing the temporary file path."""
    folder, name = where(path)
    with updated(folder) as data:
        data["pending"][name] = this_run()


def replace(tmp, path, kind):
    """Record path as kind with tmp's content, then os.replace(tmp, path): a kill in between leaves the previous
    file, which the record still accepts (as 'previous', when it was ours as the same kind); then the pending
    record of tmp goes (a kill before that leaves a record of a file that is gone: forget drops such records)."""
    record = file_record(tmp, kind)
    folder, name = where(path)
    with updated(folder) as data:
        old = data["files"].get(name)
        if isinstance(old, dict) and old.get("kind") == kind and why_not_ours(path, kind) is None:
            record["previous"] = dict(size=os.path.getsize(path), sha256=file_record(path, kind)["sha256"])
        data["files"][name] = record
    os.replace(tmp, path)
    forget(tmp)


def record_file(path, kind):
    """Record a file a library wrote for us (a TensorBoard log) as it is now."""
    folder, name = where(path)
    record = file_record(path, kind)
    with updated(folder) as data:
        data["files"][name] = record


def forget(path):
    """Drop the record of path (removed, or a temporary that is gone), and those of temporaries that are gone."""
    folder, name = where(path)
    if os.path.exists(os.path.join(folder, NAME)):
        with updated(folder) as data:
            data["files"].pop(name, None)
            data["pending"].pop(name, None)
            for gone in [tmp for tmp in data["pending"] if not os.path.lexists(os.path.join(folder, tmp))]:
                del data["pending"][gone]
