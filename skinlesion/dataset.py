"""The prepared dataset's layout: dataset/<split>/<class>/ photos, one folder per class, as prepare_dataset.py
writes it and AItraining.py and evaluate.py read it."""

import os

from skinlesion.cli import die
from skinlesion.photos import find_images

SIDES = ["benign", "malignant"]  # the two-class labels: folder names = class indices; malignant is positive


def class_folders(folder, what="data folder", classes=SIDES):
    """{class: sorted image files} of folder/<class>/ and the other files found there; dies with one line on
    a wrong layout (missing, a class folder absent or empty, another folder beside them)."""
    if not os.path.isdir(folder):
        die(f"{what} {folder} not found; make it with 'python prepare_dataset.py' or pass another folder")
    found = sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())
    missing = [c for c in classes if c not in found]
    extra = [d for d in found if d not in classes]
    wanted = " and ".join(c + "/" for c in classes)
    if missing:
        die(
            f"{folder} has no {' or '.join(m + '/' for m in missing)}; it must hold exactly one folder per class, "
            f"{wanted} (move the others out)"
        )
    if extra:
        die(
            f"{folder} has the extra {', '.join(e + '/' for e in extra)}; it must hold exactly one folder per "
            f"class, {wanted} (move the others out)"
        )
    files, others = {}, []
    for c in classes:
        files[c], skipped = find_images([os.path.join(folder, c)])
        others += skipped
    empty = [c + "/" for c in classes if not files[c]]
    if empty:
        needed = "both classes are needed" if len(classes) == 2 else "every class is needed"
        die(f"{folder}: no images in {' and '.join(empty)}; {needed} (re-run prepare_dataset.py)")
    return files, others
