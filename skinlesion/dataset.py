"""The prepared dataset's layout: dataset/<split>/<class>/ photos, one folder per class, as prepare_dataset.py
writes it and AItraining.py and evaluate.py read it."""

import contextlib
import os

import numpy as np

from skinlesion import isic
from skinlesion.cli import die, warn
from skinlesion.photos import find_images, image_size

SIDES = ["benign", "malignant"]  # the two-class labels: folder names = class indices; malignant is positive
SPLITS = ["train", "val", "test"]  # the splits prepare_dataset.py makes, in order
MANIFEST = "manifest.csv"


def read_manifest(data_dir):
    """The manifest of a prepared dataset as strings, or None where there is none (a hand-made folder tree);
    shards in an object store carry theirs."""
    import pandas as pd

    from skinlesion import shards

    if shards.is_remote(data_dir):
        return shards.remote_manifest(data_dir)
    path = os.path.join(data_dir, MANIFEST)
    if not os.path.isfile(path):
        return None
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def classes_of(manifest):
    """(classes in index order, the malignant ones, {class: its original label value}) of a prepared dataset:
    from the manifest's label, side and label_value columns, benign classes first; benign and malignant for a
    dataset without them (made by hand, or before lesion types)."""
    if manifest is None or not {"label", "side"} <= set(manifest.columns) or manifest.empty:
        return list(SIDES), ["malignant"], {c: c for c in SIDES}
    side = manifest.groupby("label").side.first()
    classes = sorted(side.index, key=lambda c: (SIDES.index(side[c]), c))
    values = manifest.groupby("label")["label_value"].first() if "label_value" in manifest else side
    return classes, [c for c in classes if side[c] == "malignant"], {c: values[c] for c in classes}


def split_photos(data_dir, split, classes):
    """(photo paths, class indices) of data_dir/split, checked by class_folders; other files skipped, counted.
    A shards folder's (skinlesion/shards.py) come from its index."""
    from skinlesion import shards

    if shards.is_shards(data_dir):
        return shards.split_photos(data_dir, split, classes)
    class_files, others = class_folders(os.path.join(data_dir, split), f"{split} folder", classes)
    if others:
        warn(f"{os.path.join(data_dir, split)}: {len(others)} file(s) that are not images skipped")
    paths = [f for c in classes for f in class_files[c]]
    return paths, np.array([i for i, c in enumerate(classes) for _ in class_files[c]])


def warn_small_photos(paths, short):
    """Photos whose shorter side is under short px get enlarged by the evaluation resize: say so, once."""
    small = 0
    for path in paths:
        with contextlib.suppress(Exception):  # unreadable: reported when it is decoded
            small += min(image_size(path)) < short
    if small:
        warn(
            f"{small} of {len(paths)} training photos are smaller than {short} px (shorter side), what "
            "IMAGE_SIZE needs: they are enlarged. prepare_dataset.py shrinks to --resize-to (256 by default): "
            f"re-run it with --resize-to {short} if the originals are larger, or lower --image-size"
        )


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


def data_summary(manifest, classes, data_dir):
    """What the card says of the training data, from the dataset's manifest (None: a folder made by hand)."""
    if manifest is None or manifest.empty:
        return dict(source=data_dir, counts={}, factors={}, attributions=[], licences={}, grouping="unknown")
    by_split = manifest.groupby(["split", "label"]).size()
    counts = {split: {c: int(by_split.get((split, c), 0)) for c in classes} for split in manifest.split.unique()}
    unknown = manifest.isic_id.map(lambda _: "unknown")  # a column the manifest lacks
    attributions = manifest.get("attribution", unknown).replace("", "unknown")
    grouped = [c for c in ("lesion_id", "patient_id") if c in manifest and manifest[c].astype(bool).any()]
    grouping = " and ".join(grouped) or "nothing (no lesion_id or patient_id): each photo is its own group"
    return dict(
        source=data_dir,
        counts=counts,
        factors=isic.factor_counts(manifest, "split"),
        attributions=attributions.value_counts().head(8).to_dict(),
        grouping=grouping,
        licences=manifest.get("copyright_license", unknown).replace("", "unknown").value_counts().to_dict(),
        label_column=manifest["label_column"].iloc[0] if "label_column" in manifest else "diagnosis_1",
        synthetic=bool(attributions.str.contains("SYNTHETIC").all()),
    )


def factor_rows(factors):
    """{factor: (splits in order, rows [value, photos per split])} of a data summary's factors, unknown last."""
    found = {}
    for factor, by_split in factors.items():
        splits = sorted(by_split, key=lambda s: (SPLITS.index(s) if s in SPLITS else len(SPLITS), s))
        values = sorted({v for counts in by_split.values() for v in counts}, key=lambda v: (v == "unknown", v))
        found[factor] = splits, [[v] + [by_split[s].get(v, 0) for s in splits] for v in values]
    return found


def not_covered(data):
    """Photo types and populations a data summary shows no photos of: where a model trained on it must not be
    trusted."""
    factors = data.get("factors", {})
    seen = {f: {v for counts in by_split.values() for v in counts if v != "unknown"} for f, by_split in factors.items()}
    types = ", ".join(sorted(seen.get("image type", set())))
    gaps = [f"photo types other than {types}" if types else "photo types it may not have seen (not recorded)"]
    skin = {"I", "II", "III", "IV", "V", "VI"} - seen.get("skin type", set())
    if skin:
        gaps.append(f"Fitzpatrick skin types {', '.join(sorted(skin))} (no photos, or not recorded)")
    bands = [band for _, _, band in isic.AGE_BANDS if band not in seen.get("age band", set())]
    if bands:
        gaps.append(f"ages {', '.join(bands)} (no photos, or not recorded)")
    return gaps
