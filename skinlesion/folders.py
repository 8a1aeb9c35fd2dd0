"""Folders we make carry our mark (MARK, a ledger, inside: ledger.py), and only those whose mark names their very
path and records every file in them are replaced or removed: a folder is rebuilt beside the old one and swapped in
when the run succeeds, one run at a time (a lock), and what killed runs left is cleaned up only when its mark says
which run left it there and that run is over. An output folder never holds an input."""

import contextlib
import os
import re
import shutil

from skinlesion import interrupts, ledger
from skinlesion.messages import UserError, first_few, printable, warn

MARK = ledger.NAME  # the mark (a ledger) inside every folder we make


def is_within(path, folder):
    """Whether path is folder or lies inside it, after links."""
    folder = os.path.realpath(folder)
    return os.path.commonpath([os.path.realpath(path), folder]) == folder


def check_output_folder(path, flag, inputs=()):
    """raise UserError when an output folder (replaced as a whole) holds one of the inputs."""
    for given in inputs:
        if given and is_within(given, path):
            raise UserError(f"{flag} {printable(path)}: use a folder that does not hold {printable(given)}")


def check_outside(path, flag, input_folders):
    """raise UserError when an output folder lies inside one of the input folders (the same after links)."""
    for folder in input_folders:
        if is_within(path, folder):
            raise UserError(f"{flag} {printable(path)}: use a folder outside {printable(folder)} (an input)")


def lock_folder(folder, script):
    """An exclusive flock on folder (where the system has one), as an open descriptor, or None where locks are
    not available; a second holder dies with one line naming the run that holds it (lock_holder)."""
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
        holder = lock_holder(folder) or "a run of a script of this project"
        raise UserError(
            f"{holder} is writing in {printable(folder)}; wait for it to finish, then run {script} again"
        ) from None
    except OSError:  # a file system without locks: run unlocked
        os.close(lock)
        return None
    return lock


def lock_holder(folder):
    """The run that holds the lock on folder, in words ('prepare_dataset.py (pid 12, building dataset.tmp-12)'),
    from the mark of the folder it builds there (replaced_folder), or None where no such mark says it."""
    for entry in sorted(os.listdir(folder)):
        full = os.path.join(folder, entry)
        if not re.fullmatch(r".+\.tmp-\d+", entry) or os.path.islink(full) or not os.path.isdir(full):
            continue
        raw = {} if records_fault(full) else ledger.read_raw(full) or {}
        made, left = raw.get("made"), raw.get("leftover")
        if not isinstance(made, dict) or not isinstance(left, dict) or left.get("path") != os.path.realpath(full):
            continue
        if not ledger.run_is_over(left.get("run")):
            pid = left["run"].get("pid") if isinstance(left.get("run"), dict) else "?"
            return f"{printable(made.get('script'))} (pid {printable(pid)}, building {printable(entry)})"
    return None


def unproven(path, kind=None, script="this project"):
    """None when the folder at path is provably ours, else (why not, the names that show it): its mark (the ledger
    inside) names this very path and says a script of ours made it (as kind, when given), and every file in it,
    sub-folders too, is one a ledger records, unchanged. Files in a folder are compared by size and mtime (hashed
    once when written, not again before each replace: a dataset can hold 400k photos)."""
    data, raw = ledger.read(path), ledger.read_raw(path)
    made = data.get("made")
    if raw is None and os.path.isfile(os.path.join(path, MARK)):
        return "was made by an earlier version (no record of its files)", sorted(os.listdir(path))
    if raw is not None and raw.get("path") != data["path"]:
        return f"carries the mark of {printable(raw.get('path'))} (a copy or a moved folder)", []
    if not isinstance(made, dict):
        return f"holds files that {script} did not make", sorted(os.listdir(path))
    if kind is not None and made.get("kind") != kind:
        return f"is a {made.get('kind')} that {made.get('script')} made, not a {kind}", []
    strangers = []
    for folder, subfolders, names in os.walk(path):
        strangers += [os.path.relpath(os.path.join(folder, sub), path) for sub in subfolders if
                      os.path.islink(os.path.join(folder, sub))]  # fmt: skip
        own = ledger.read(folder)["files"] if folder != path else {}
        for name in names:
            full = os.path.join(folder, name)
            record = data["files"].get(os.path.relpath(full, path)) or own.get(name)
            if not ledger.is_own(name) and not unchanged(full, record):
                strangers.append(os.path.relpath(full, path))
    if strangers:
        return f"holds files that {script} did not make", sorted(strangers)
    return None


def unchanged(path, record):
    """Whether the file at path is the one record describes (a regular file of its size and mtime)."""
    if not isinstance(record, dict) or os.path.islink(path):
        return False
    try:
        st = os.stat(path)
    except OSError:  # gone meanwhile
        return False
    return st.st_size == record.get("size") and st.st_mtime_ns == record.get("mtime_ns")


def check_replaceable(path, flag, script, kind):
    """fail unless the folder at path may be replaced as a whole: missing, empty, or provably ours as kind (never
    a link)."""
    path = os.path.normpath(path)  # 'link/' is the link itself, not what it points to
    if os.path.islink(path):
        points_to = printable(os.path.realpath(path))
        raise UserError(
            f"{flag} {printable(path)} is a symbolic link; pass the folder it points to ({points_to}), or a new folder"
        )
    if not os.path.lexists(path):
        return
    if not os.path.isdir(path):
        raise UserError(f"{flag} {printable(path)}: use a folder, not a file")
    if not os.listdir(path):
        return
    why = unproven(path, kind, script)
    if why:
        reason, names = why
        found = f" ({first_few(map(printable, names))})" if names else ""
        hint = "pass a new or empty folder: it is replaced as a whole"
        raise UserError(f"{flag} {printable(path)} {reason}{found}; {hint}")


def made_here(path):
    """Whether the folder at path carries a mark of ours that names this very path."""
    return isinstance(ledger.read(path).get("made"), dict)


def leftovers(path, suffix):
    """Folders <path>.<suffix>-<n> beside path, each with whether it is a provable leftover of a run that is over
    (its mark says that run put it at this very path), 'running' (its run goes on), 'empty' (nothing in it: a
    removal cut short after its mark, which goes last, went; nothing to lose), or None (not ours to touch)."""
    folder, name = os.path.split(os.path.abspath(path))
    found = []
    for entry in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        full = os.path.join(folder, entry)
        if not re.fullmatch(re.escape(name) + r"\." + suffix + r"-\d+", entry) or not os.path.isdir(full):
            continue
        left = None if os.path.islink(full) or records_fault(full) else (ledger.read_raw(full) or {}).get("leftover")
        if os.path.islink(full) or not isinstance(left, dict) or left.get("path") != os.path.realpath(full):
            found.append((full, "empty" if not os.path.islink(full) and not os.listdir(full) else None))
        elif ledger.run_is_over(left.get("run")):
            found.append((full, "over"))
        else:
            found.append((full, "running"))
    return found


def remove_leftover(path):
    """Remove a leftover folder of ours, its mark last (a kill on the way leaves a leftover the mark still proves,
    or an empty folder); links in it are removed, never followed. A failure is one warning naming it."""
    try:
        for entry in sorted(os.listdir(path)):
            full = os.path.join(path, entry)
            if os.path.isdir(full) and not os.path.islink(full):
                shutil.rmtree(full)
            elif not ledger.is_own(entry):
                os.remove(full)
        shutil.rmtree(path)
    except OSError as e:
        warn(f"could not remove {printable(path)} ({e.strerror or e}), a leftover of a run of ours; the next run does")


def leave_alone(path, why="no record says a run of ours left it"):
    print(f"left {printable(path)} alone: {why}")


def record_folder(tmp, path, made):
    """The mark of the new folder tmp once its files are written: it names path (where it is swapped in), the
    run that made it, and every file in it with its size, mtime and sha256 (a killed run's tmp stays a leftover
    of that run)."""
    files = {}
    for folder, _, names in os.walk(tmp):
        for name in names:
            full = os.path.join(folder, name)
            if not ledger.is_own(name) and not os.path.islink(full):
                files[os.path.relpath(full, tmp)] = ledger.file_record(full, made["kind"])
    data = dict(format=ledger.FORMAT, path=os.path.realpath(path), files=files, pending={}, made=made)
    data["leftover"] = dict(path=os.path.realpath(tmp), run=ledger.this_run())
    ledger.write(tmp, data)


def set_leftover(path, leftover):
    """Say in the mark of our folder at path that this run moves it to leftover (None: it is in its place)."""
    with ledger.updated(path) as data:
        data.pop("leftover", None)
        if leftover:
            data["leftover"] = dict(path=os.path.realpath(leftover), run=ledger.this_run())


@contextlib.contextmanager
def replaced_folder(path, script, kind):
    """with replaced_folder(path, script, kind) as tmp: the block writes a new folder tmp (path.tmp-<pid>, its mark
    saying this run builds it there), which replaces path when the block ends without an error; an error, a kill
    or Ctrl-C leave path as it was. check_replaceable(path) must have passed. One run per parent folder (an
    exclusive flock): a second dies with one line. Leftovers whose mark says a run that is over left them at that
    very path are removed once the lock is held, and a swap cut short between its two renames is put back; any
    other folder of such a name is left alone and named in one line."""
    path = os.path.normpath(path)
    folder = os.path.dirname(os.path.abspath(path))
    tmp, old = f"{path}.tmp-{os.getpid()}", f"{path}.old-{os.getpid()}"
    os.makedirs(folder, exist_ok=True)  # a new folder's parent, e.g. --dataset-dir runs/first/dataset
    lock = lock_folder(folder, script)
    made = dict(kind=kind, script=script, run=ledger.this_run())
    try:
        for left, state in leftovers(path, "old"):
            if state is None:
                leave_alone(left)
            elif state == "empty" or (state == "over" and os.path.lexists(path)):
                remove_leftover(left)
            elif state == "over":
                os.rename(left, path)
                set_leftover(path, None)
                print(
                    f"restored {printable(path)} from {printable(left)}, left by a {script} run killed while swapping"
                )
        for left, state in leftovers(path, "tmp"):
            if state is None:
                leave_alone(left)
            elif state in ("over", "empty"):
                remove_leftover(left)
        os.makedirs(tmp)
        start = dict(format=ledger.FORMAT, path=os.path.realpath(tmp), files={}, pending={}, made=made)
        ledger.write(tmp, dict(start, leftover=dict(path=os.path.realpath(tmp), run=ledger.this_run())))
        yield tmp
        interrupts.raise_if_pressed()  # a Ctrl-C a library swallowed still keeps the previous folder
        record_folder(tmp, path, made)
        interrupts.raise_if_pressed()
        if os.path.lexists(path):
            set_leftover(path, old)
            os.rename(path, old)
        os.rename(tmp, path)
        interrupts.say_on_ctrl_c(f"interrupted; {printable(path)} is already the new one, complete")
        set_leftover(path, None)
        if os.path.lexists(old):
            remove_leftover(old)
    finally:
        if os.path.lexists(tmp):
            remove_leftover(tmp)
        if lock is not None:
            os.close(lock)


def records_fault(path):
    """Why a record in the folder at path, or in one of its sub-folders (links not followed), cannot be read
    (ledger.record_fault), or None: such a folder is left alone as a whole."""
    if os.path.islink(path) or not os.path.isdir(path):
        return None
    for folder, _, _ in os.walk(path):
        fault = ledger.record_fault(folder)
        if fault:
            return fault
    return None


def made_folder(path, script, kind):
    """Make the folder at path, its mark saying a script of ours made it as kind, unless it exists (then it
    stays as it is). Where the mark cannot be written (a full disk), the folders made here are removed again,
    innermost first and only while empty, and the error goes on: no empty, unmarked folder is left behind."""
    if os.path.isdir(path):
        return
    made, folder = [], os.path.abspath(path)
    while not os.path.lexists(folder):  # what makedirs makes: the folder and its missing parents
        made.append(folder)
        folder = os.path.dirname(folder)
    os.makedirs(path)
    try:
        mark_folder(path, script, kind)
    except BaseException:
        for folder in made:
            with contextlib.suppress(OSError):  # not empty (another wrote there meanwhile): it stays
                os.rmdir(folder)
        raise


def mark_folder(path, script, kind):
    """Mark the folder at path (new or empty) as made by script as kind."""
    with ledger.updated(path) as data:
        data["made"] = dict(kind=kind, script=script, run=ledger.this_run())


def record_files(folder, sub, kind):
    """Record in folder's ledger the files a library wrote for us in folder/sub (TensorBoard's logs), as they are."""
    found = {}
    for parent, _, names in os.walk(os.path.join(folder, sub)):
        for name in names:
            full = os.path.join(parent, name)
            if not ledger.is_own(name) and not os.path.islink(full):
                found[os.path.relpath(full, folder)] = ledger.file_record(full, kind)
    with ledger.updated(folder) as data:
        data["files"].update(found)


def check_reusable(path, flag, script):
    """fail unless script may write in the folder at path: missing, empty, or marked as made there by us (a work
    folder kept between runs)."""
    if os.path.isdir(path) and os.listdir(path) and not made_here(path):
        found = first_few(sorted(os.listdir(path)))
        raise UserError(
            f"{flag} {printable(path)} holds files that {script} did not make ({found}); pass a new or empty folder"
        )
