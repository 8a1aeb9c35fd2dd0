"""Removing what this project provably made (make clean): a folder of ours as a whole, the files a ledger records
unchanged, a file whose record matches, and the leftovers of killed runs that their mark proves. A link is never
followed, wherever it is in a path; everything that stays is named in one line."""

import os
import shutil

from skinlesion import ledger
from skinlesion.folders import leave_alone, leftovers, records_fault, remove_leftover, unchanged, unproven
from skinlesion.messages import printable

LINK = "a link (what it points to is not removed)"


def remove_ours(paths):
    """Remove what this project provably made among paths (unproven, ledger.why_not_ours): a folder of
    ours as a whole; in a folder with a ledger, the files it records unchanged, then the folder if nothing else is
    left; a file whose record matches. A link is never followed, wherever it is in a path: it stays, and so does
    what it points to. Everything else stays too and is named in one line (a record that cannot be read, a file
    that cannot be removed), and the rest of paths is still done. The leftovers of killed runs beside each path
    (<path>.tmp-<n>, <path>.old-<n>: leftovers) go when their mark proves them, else are named. Says what it
    removed."""
    removed = remove_all(paths, set())
    for path in paths:
        for full, state in leftovers(path, "tmp") + leftovers(path, "old"):
            left = os.path.join(os.path.dirname(path), os.path.basename(full))  # as the path was given
            if state in ("over", "empty"):
                remove_leftover(left)  # a failure is a warning naming it
                if not os.path.lexists(left):
                    removed.append(said_removed(left))
            elif state == "running":
                leave_alone(left, "a run of ours is still writing it")
            else:
                leave_alone(left)
    return removed


def remove_all(paths, named):
    """remove_ours, where named holds the links already named (remove_recorded names those it meets)."""
    removed = []
    for path in paths:
        if not os.path.lexists(path) or ledger.is_own(os.path.basename(path)) or path in named:
            continue
        fault = records_fault(path)
        if os.path.islink(path):
            leave_alone(path, LINK)
        elif link_above(path):  # what a link leads to is not ours to remove
            leave_alone(link_above(path), LINK)
        elif fault:
            leave_alone(path, fault)
        else:
            try:
                removed += remove_one(path, named)
            except OSError as e:  # permissions, a disk that went away: the rest of the list is still done
                leave_alone(path, f"could not remove it ({e.strerror or e})")
    return removed


def link_above(path):
    """The first link among the folders path names above its last part, as given (never resolved), or None."""
    parts = os.path.normpath(path).split(os.sep)[:-1]
    for i in range(1, len(parts) + 1):
        folder = os.sep.join(parts[:i]) or os.sep
        if os.path.islink(folder):
            return folder
    return None


def remove_one(path, named):
    """remove_all of one path that is not a link and whose records can be read."""
    if os.path.isdir(path) and unproven(path) is None:  # no link in it (unproven); rmtree never follows one
        shutil.rmtree(path)
        return [said_removed(path)]
    if os.path.isdir(path) and (ledger.read_raw(path) or {}).get("path") == os.path.realpath(path):
        removed = remove_recorded(path, named)
        removed += remove_all([os.path.join(path, name) for name in sorted(os.listdir(path))], named)
        if all(ledger.is_own(name) for name in os.listdir(path)):
            shutil.rmtree(path)
            removed.append(said_removed(path))
        return removed
    if os.path.isdir(path):
        leave_alone(path, "no record that this project made it")
    elif ledger.why_not_ours(path) is None:
        os.remove(path)
        ledger.forget(path)
        return [said_removed(path)]
    else:
        leave_alone(path, "not written by this project (or changed since)")
    return []


def said_removed(path):
    print(f"removed {printable(path)}")
    return path


def first_link(folder, rel):
    """The first link on the way from folder to folder/rel (rel's last part too), or None: each part is looked at
    itself (lstat), never through a link."""
    parts = rel.split(os.sep)
    for i in range(1, len(parts) + 1):
        path = os.path.join(folder, *parts[:i])
        if os.path.islink(path):
            return path
    return None


def remove_recorded(folder, named):
    """Remove the files in folder (sub-folders too) that its ledger records, unchanged, and the sub-folders that
    leaves empty; the records go. A link on the way to a file is named once (added to named) and nothing behind it
    is removed. Returns what it removed."""
    removed = []
    with ledger.updated(folder) as data:
        for rel, record in sorted(data["files"].items()):
            full = os.path.join(folder, rel)
            inside = not os.path.isabs(rel) and os.path.normpath(rel) == rel and not rel.startswith("..")
            link = first_link(folder, rel) if inside else None
            if link and link not in named:
                named.add(link)
                leave_alone(link, LINK)
            if not inside or link or not os.path.isfile(full):
                continue
            if os.sep in rel:
                ours = unchanged(full, record)
            else:
                ours = ledger.why_not_ours(full) is None
            if ours:
                os.remove(full)
                removed.append(said_removed(full))
                del data["files"][rel]
    for rel in sorted({os.path.dirname(os.path.relpath(path, folder)) for path in removed}, reverse=True):
        parent = os.path.join(folder, rel)
        while rel and not os.listdir(parent):
            os.rmdir(parent)
            rel = os.path.dirname(rel)
            parent = os.path.join(folder, rel)
    return removed
