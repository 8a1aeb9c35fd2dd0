"""The prepared dataset's layout: dataset/<split>/<class>/ photos, one folder per class, as prepare_dataset.py
writes it and AItraining.py and evaluate.py read it."""

import contextlib
import io
import os

from skinlesion import reading, remote
from skinlesion.files import file_kind, file_sha256
from skinlesion.messages import UserError, printable, warn
from skinlesion.photos import find_images, image_size
from skinlesion.schema import as_text

SIDES = ["benign", "malignant"]  # the two-class labels: folder names = class indices; malignant is positive
SPLITS = ["train", "val", "test"]  # the splits prepare_dataset.py makes, in order
MANIFEST = "manifest.csv"
MANIFEST_COLUMNS = ["isic_id", "split", "label"]  # what every manifest holds (prepare_dataset.py writes more)
MAX_MANIFEST_BYTES = 2_000_000_000  # the largest manifest read (400,000 photos: about 200 MB)
MANIFEST_FIX = "re-run prepare_dataset.py, or remove it where the folder was made by hand"


def read_manifest(data_dir):
    """The manifest of a prepared dataset as strings, or None where there is none (a hand-made folder tree);
    shards in an object store carry theirs (remote_manifest). One that is there but cannot be read raises
    UserError, in one line: ignored, the card said 'licence unknown' and the export's licence (CC-BY-NC) silently
    dropped out."""
    if remote.is_remote(data_dir):
        return remote_manifest(data_dir)
    path = os.path.join(data_dir, MANIFEST)
    if not os.path.lexists(path):
        return None
    kind = file_kind(path)
    if kind:
        what = "a link to nothing" if kind == "missing" else kind
        raise UserError(f"{printable(path)} is {what}, not a manifest; {MANIFEST_FIX}")
    try:
        data = reading.read_bytes(path, MAX_MANIFEST_BYTES)
    except reading.Unreadable as e:
        raise UserError(f"{e}; {MANIFEST_FIX}") from None
    except OSError as e:
        raise UserError(f"cannot read {printable(path)} ({e.strerror or e}); {MANIFEST_FIX}") from None
    return parse_manifest(data, path)


def remote_manifest(data_dir):
    """The manifest beside shards in an object store, as strings (read_manifest)."""
    where = data_dir.rstrip("/") + "/" + MANIFEST
    try:
        data = remote.read_all(where, MAX_MANIFEST_BYTES)
    except OSError as e:  # remote.Reader's one line: the address and what to check
        raise UserError(str(e)) from None
    return parse_manifest(data, where)


def parse_manifest(data, path):
    """The manifest in data (its bytes, read from path) as strings; raises UserError naming path when it is
    binary, not CSV, or lacks a column every manifest has (MANIFEST_COLUMNS)."""
    import pandas as pd

    if b"\0" in data:  # pandas reads a file of zero bytes as an empty table: ignored, 'licence unknown'
        raise UserError(f"{printable(path)} holds binary data, not CSV text; {MANIFEST_FIX}")
    try:
        manifest = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)
    except (OSError, ValueError) as e:  # not UTF-8, not CSV (ParserError and EmptyDataError too)
        why = str(e).strip().splitlines()[0]
        raise UserError(
            f"cannot read {printable(path)} ({type(e).__name__}: {printable(why)}); {MANIFEST_FIX}"
        ) from None
    missing = [column for column in MANIFEST_COLUMNS if column not in manifest]
    if missing:
        found = ", ".join(printable(column)[:40] for column in manifest.columns[:6]) or "none"
        raise UserError(
            f"{printable(path)} has no {' or '.join(missing)} column (its columns: {found}); {MANIFEST_FIX}"
        )
    return manifest


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


def manifest_sha256(data_dir):
    """The SHA-256 of a local dataset's manifest.csv (what a model file and a resume checkpoint name their data
    by), or None where it has none."""
    path = os.path.join(data_dir, MANIFEST)
    return file_sha256(path) if not file_kind(path) else None


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
    """{class: sorted image files} of folder/<class>/ and the other files found there; raises UserError on
    a wrong layout (missing, a class folder absent or empty, another folder beside them)."""
    if not os.path.isdir(folder):
        raise UserError(
            f"{what} {printable(folder)} not found; make it with 'python prepare_dataset.py' or pass another folder"
        )
    found = sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())
    missing = [c for c in classes if c not in found]
    extra = [d for d in found if d not in classes]
    wanted = " and ".join(c + "/" for c in classes)
    if missing:
        raise UserError(
            f"{printable(folder)} has no {' or '.join(m + '/' for m in missing)}; it must hold exactly one folder per "
            f"class, {wanted} (move the others out)"
        )
    if extra:
        raise UserError(
            f"{printable(folder)} has the extra {', '.join(printable(e) + '/' for e in extra)}; it must hold exactly "
            f"one folder per class, {wanted} (move the others out)"
        )
    files, others = {}, []
    for c in classes:
        files[c], skipped = find_images([os.path.join(folder, c)])
        others += skipped
    empty = [c + "/" for c in classes if not files[c]]
    if empty:
        needed = "both classes are needed" if len(classes) == 2 else "every class is needed"
        raise UserError(
            f"{printable(folder)}: no images in {' and '.join(empty)}; {needed} (re-run prepare_dataset.py)"
        )
    return files, others


def data_summary(manifest, classes, data_dir):
    """What the card says of the training data, from the dataset's manifest (None: a folder made by hand); each
    text as a model file may hold it (schema.as_text: printable, bounded)."""
    from skinlesion import isic  # pandas: not on the path of model.py's importers (--help, ONNX predict)

    if manifest is None or manifest.empty:
        source = as_text(data_dir) or "unknown"
        return dict(source=source, counts={}, factors={}, attributions={}, licences={}, grouping="unknown")
    by_split = manifest.groupby(["split", "label"]).size()
    counts = {
        as_text(split) or "unknown": {c: int(by_split.get((split, c), 0)) for c in classes}
        for split in manifest.split.unique()
    }
    unknown = manifest.isic_id.map(lambda _: "unknown")  # a column the manifest lacks
    attributions = manifest.get("attribution", unknown).map(as_text).replace("", "unknown")
    licences = manifest.get("copyright_license", unknown).map(as_text)
    grouped = [c for c in ("lesion_id", "patient_id") if c in manifest and manifest[c].astype(bool).any()]
    grouping = " and ".join(grouped) or "nothing (no lesion_id or patient_id): each photo is its own group"
    return dict(
        source=as_text(data_dir) or "unknown",
        counts=counts,
        factors=isic.factor_counts(manifest, "split"),
        attributions=attributions.value_counts().head(8).to_dict(),
        grouping=grouping,
        licences=licences.replace("", "unknown").value_counts().to_dict(),
        label_column=as_text(manifest.get("label_column", "diagnosis_1" + unknown.str[:0]).iloc[0]) or "unknown",
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
    from skinlesion import isic

    factors = data.get("factors", {})
    seen = {f: {v for counts in by_split.values() for v in counts if v != "unknown"} for f, by_split in factors.items()}
    types = ", ".join(sorted(seen.get("image type", set())))
    gaps = [f"photo types other than {types}" if types else "photo types it may not have seen (not recorded)"]
    skin = {"I", "II", "III", "IV", "V", "VI"} - seen.get("skin type", set())
    if seen.get("skin type") and skin:  # none recorded at all: not_recorded says so
        gaps.append(f"Fitzpatrick skin types {', '.join(sorted(skin))} (no photos, or not recorded)")
    bands = [band for _, _, band in isic.AGE_BANDS if band not in seen.get("age band", set())]
    if seen.get("age band") and bands:
        gaps.append(f"ages {', '.join(bands)} (no photos, or not recorded)")
    return gaps


def not_recorded(data):
    """What the data does not say about its photos (skin type, age recorded for none), and what that means."""
    factors = data.get("factors", {})
    seen = {f: {v for counts in by_split.values() for v in counts if v != "unknown"} for f, by_split in factors.items()}
    found = []
    if not seen.get("skin type"):
        found.append(
            "Skin type was not recorded for these photos: how the model does on any skin type, darker skin in "
            "particular, is not known."
        )
    if not seen.get("age band"):
        found.append("Age was not recorded for these photos: how the model does at any age is not known.")
    return found


def external_name(data_dir, trained_on=None):
    """None where data_dir is the model's own test split (a folder named test in the dataset it was trained on:
    the same manifest.csv, whose SHA-256 trained_on the model file holds where known), else the name an external
    validation goes by (the folder, with its parent for a split's folder)."""
    folder = os.path.abspath(data_dir)
    manifest = os.path.join(os.path.dirname(folder), MANIFEST)
    same = trained_on is None or (os.path.isfile(manifest) and file_sha256(manifest) == trained_on)
    if os.path.basename(folder) == "test" and same:
        return None
    parts = folder.split(os.sep)[-2:] if os.path.basename(folder) in ("test", "val", "train") else [folder]
    return printable("/".join(os.path.basename(part) for part in parts))
