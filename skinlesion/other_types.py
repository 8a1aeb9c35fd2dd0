"""Photos of another kind than the training photos (dermoscopic ones for a model of clinical photos, clinical ones for
a dermoscopic model): an ISIC export often holds several image types, and prepare_dataset.py keeps one. It keeps a
bounded sample of the others' photos as FOLDER/<type>.<file>, and the familiarity check (skinlesion/familiarity.py)
learns to tell them from the training photos."""

import os
import re

import numpy as np

from skinlesion import isic

FOLDER = "other_types"  # in a prepared dataset: <type>.<file>, photos of the export's image types of another kind
NAME = r"[a-z0-9_]{1,40}"  # what a type is called in a file name (type_name); another prefix counts as 'other'


def modality(image_type):
    """The kind of photo an image type is: 'dermoscopic', 'clinical' (overview and close-up), 'TBP tile', 'RCM'."""
    current = {legacy: name for name, legacy in isic.LEGACY_TYPES.items()}.get(image_type, image_type)
    return current.split(":")[0]


def type_name(image_type):
    """An image type as a file name's prefix: 'clinical: close-up' -> 'clinical_close_up'."""
    return re.sub(r"[^a-z0-9]+", "_", image_type.lower()).strip("_")[:40] or "other"


def keep(rows, image_types, most, images_dir, out_dir, skip, seed, resize_to, workers):
    """A seeded sample of at most `most` photos of the export's rows (isic_id, image_type) whose image type is of
    another kind than image_types' (any label; the bound shared by the types), decoded and shrunk as prepare does
    (isic.decode_balanced) into out_dir/FOLDER/<type>.<file>. A note saying what was kept."""
    wanted = {modality(t) for t in image_types}
    valid = rows.isic_id.str.fullmatch(isic.ISIC_ID) & (rows.image_type != "")
    others = rows[valid & ~rows.image_type.map(modality).isin(wanted)].drop_duplicates("isic_id")
    found = isic.image_files(others.isic_id, images_dir, skip)[0] if len(others) else {}
    others = others[others.isic_id.isin(found.keys())].reset_index(drop=True)
    if others.empty:
        return "note: no photo of another kind (image type) in the export: the familiarity check learns from drawn ones"
    others = others.assign(path=others.isic_id.map(found), label=others.image_type.map(type_name))
    share = -(-most // others.label.nunique())  # ceil
    chosen, unreadable, _ = isic.decode_balanced(others, share, seed, out_dir, resize_to, workers)
    for row in chosen.iloc[most:].itertuples():  # the types' shares rounded up: past the bound
        os.remove(os.path.join(out_dir, row.file))
    chosen = chosen.head(most)
    os.makedirs(os.path.join(out_dir, FOLDER), exist_ok=True)
    for row in chosen.itertuples():
        os.rename(os.path.join(out_dir, row.file), os.path.join(out_dir, FOLDER, f"{row.label}.{row.file}"))
    kept = ", ".join(f"{label} {n}" for label, n in chosen.label.value_counts().sort_index().items())
    skipped = f" ({len(unreadable)} unreadable left out)" if unreadable else ""
    return f"kept {len(chosen)} photos of another kind in {FOLDER}/ for the familiarity check: {kept}{skipped}"


def photos_of(data_dir, most):
    """{type: photo paths} of the photos a prepared dataset keeps in FOLDER (none in a dataset of shards, or one
    prepared before), at most `most` in all (a seeded sample)."""
    from skinlesion import photos, remote

    folder = os.path.join(data_dir, FOLDER)
    if remote.is_remote(data_dir) or not os.path.isdir(folder):
        return {}
    paths = photos.find_images([folder])[0]
    if len(paths) > most:
        paths = [paths[i] for i in sorted(np.random.default_rng(0).choice(len(paths), most, replace=False))]
    found = {}
    for path in paths:
        name = os.path.basename(path).split(".")[0]
        found.setdefault(name if re.fullmatch(NAME, name) else "other", []).append(path)
    return found
