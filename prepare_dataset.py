"""
Build dataset/ from an ISIC Archive export: keep one image type and the definite labels, sample a balanced set,
split it by lesion and patient, and shrink the photos. In full: docs/reference.md.

    python prepare_dataset.py                  # reads isic_images/**/metadata.csv and the images beside them
    python prepare_dataset.py --image-types dermoscopic --n-per-class 500
    python prepare_dataset.py --label-column diagnosis_3   # lesion types: a class per value, each on one side
    python make_demo_data.py && python prepare_dataset.py --metadata-csv demo_data/metadata.csv --images-dir demo_data
"""

from skinlesion import interrupts

if __name__ == "__main__":  # first, before the libraries load: a Ctrl-C while they do is one line, not a traceback
    interrupts.one_line_while_loading()

import os
import re
import shlex
import sys
import time

import numpy as np
import pandas as pd

from skinlesion import dataset, files, flags, folders, isic, messages, other_types, photos, schema, shard_format

# -----------------------------------------------------------------------------
METADATA_CSV = "metadata.csv"  # the export's metadata; if absent, every metadata.csv under IMAGES_DIR is read
IMAGES_DIR = "isic_images"  # folder searched, sub-folders too, for the <isic_id>.<ext> images
DATASET_DIR = "dataset"  # output folder (not holding the export), replaced as a whole only if we made it
IMAGE_TYPES = ["clinical: overview"]  # ISIC image_type values to keep, e.g. dermoscopic (a wrong one lists them all)
LABEL_COLUMN = "diagnosis_1"  # the class: diagnosis_1 (benign/malignant), or a column of types: diagnosis_3, diagnosis
N_PER_CLASS = 200  # images per class at most, >= 1 (all there are, if fewer)
MIN_PER_CLASS = 20  # with a type column: values with fewer usable photos are left out and listed, >= 1
OTHER = False  # with a type column: merge the rarer values of each side into 'other benign' / 'other malignant'
VAL_FRACTION = 0.15  # share of the groups for validation, 0 to 0.9 in steps of 0.05 (0: no val split)
TEST_FRACTION = 0.15  # share of the groups for test, 0 to 0.9 likewise, val + test <= 0.9 (0: no test split)
RESIZE_TO = 256  # shorter side in px, >= 1, never upscaled; None (--resize-to none): copy the files as they are
MIN_KEPT = 0.5  # 0 to 1: stop when less of the rows survive bad labels, ids and image files; 0 = never
KEEP_OTHER_TYPES = 300  # photos of another kind (dermoscopic for clinical...) kept for the familiarity check, 0 to 1e5
SEED = 42  # sampling and split, 0 to 2**32 - 1
WORKERS = os.cpu_count()  # processes that decode images, 1 to 1024 (1: no pool)
SHARDS = False  # also write the splits as WebDataset shards in DATASET_DIR/shards/ (several machines, object stores)
SHARD_MB = 256.0  # size of a shard in MB, > 0 (the last of a split is smaller; a few shards per torchrun process)
# -----------------------------------------------------------------------------
KEPT = ["isic_id", "label", "label_value", "side", "label_column", "lesion_id", "patient_id"]  # + CARD_COLUMNS


def download_hint(image_types, images_dir):
    query = " OR ".join(f'image_type:"{t}"' for t in image_types)
    if len(image_types) > 1:
        query = f"({query})"
    return (
        f"download an export with: isic image download --search '{query} AND diagnosis_1:Benign' --limit 300 "
        f"{messages.printable(os.path.join(images_dir, 'benign'))}, and the same with diagnosis_1:Malignant into "
        f"{messages.printable(os.path.join(images_dir, 'malignant'))} (pip install isic-cli); or try python "
        "make_demo_data.py"
    )


def folder_name(value, taken):
    """A safe, distinct folder name for a label value: 'Melanoma Invasive' -> 'melanoma_invasive'."""
    base = re.sub(r"[^a-z0-9]+", "_", value.lower()).strip("_") or "class"
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}_{n}"
    taken.add(name)
    return name


def filter_rows(df, image_types, label_column=LABEL_COLUMN):
    """(usable rows with side and label_value, the rows of the wanted image types, summary steps [(step, rows left,
    what was left out)], rows lost for an unexpected reason [(cause, rows, examples)])."""
    steps, losses = [("rows read", len(df), "")], []
    allowed = set(image_types) | {isic.LEGACY_TYPES.get(t, t) for t in image_types}

    def keep(df, ok, step, why):
        steps.append((step, int(ok.sum()), "" if ok.all() else why))
        return df[ok]

    if "image_type" not in df:
        steps.append(("image_type", len(df), "no image_type column: all rows kept"))
    elif len(df) and not df.image_type.isin(allowed).any():
        found = df.image_type[df.image_type != ""].value_counts().index  # an empty type cannot be asked for
        fix = "download the export again with 'isic image download' (its metadata.csv names each photo's type)"
        if len(found):
            flags = [shlex.quote(t) for t in found[:2]]
            fix = f"pass --image-types {flags[0]} (several: --image-types {' '.join(flags)})"
        raise messages.UserError(
            f"no row has image type {' or '.join(sorted(allowed))}; the export has "
            f"{messages.counts_text(df.image_type)}: {fix}"
        )
    else:
        ok = df.image_type.isin(allowed)
        why = "left out: " + messages.counts_text(df.image_type[~ok])
        df = keep(df, ok, "image_type " + " or ".join(sorted(allowed)), why)
    typed = df = df.assign(side=isic.sides(df))
    two_class = label_column in isic.SIDE_COLUMNS
    if not two_class and label_column not in df:
        raise messages.UserError(
            f"--label-column {label_column}: the metadata has no such column; use one of its diagnosis columns "
            "(diagnosis_2 to diagnosis_5, or diagnosis in older exports)"
        )
    df["label_value"] = df.side if two_class else df[label_column]
    if not two_class:
        df = keep(df, df.label_value != "", f"with a {label_column} value", "left out: empty")
        named = df.label_value.map(lambda value: schema.is_text(value, schema.MAX_NAME))
        why = "left out (a class name must be printable text): " + messages.counts_text(df.label_value[~named], 3)
        df = keep(df, named, f"printable, at most {schema.MAX_NAME} characters", why)
    ok = df.side.isin(dataset.SIDES)
    odd = ~ok & ~isic.is_undecided(df.side)
    losses.append(("label outside ISIC's vocabulary or in conflict", odd.sum(), messages.counts_text(df.side[odd], 3)))
    df = keep(df, ok, "with a definite benign/malignant side", "left out: " + messages.counts_text(df.side[~ok]))
    ok = df.isic_id.str.fullmatch(isic.ISIC_ID)
    losses.append(("invalid isic_id", (~ok).sum(), messages.first_few(df.isic_id[~ok].map(repr))))
    df = keep(df, ok, "with a valid isic_id", f"refused {(~ok).sum()}: {losses[-1][2]}")
    contradicting = df.groupby("isic_id").label_value.transform("nunique") > 1
    losses.append(
        ("isic_id listed with different labels", contradicting.sum(), messages.first_few(df.isic_id[contradicting]))
    )
    df = keep(
        df, ~contradicting, "no isic_id with different labels", f"left out {contradicting.sum()}: {losses[-1][2]}"
    )
    ok = ~df.isic_id.duplicated()
    df = keep(df, ok, "unique isic_id", f"{(~ok).sum()} repeated rows kept once")
    if not two_class:
        df = keep_majority_side(df, steps)
    return df, typed, steps, losses


def keep_majority_side(df, steps):
    """A type whose rows disagree on the side keeps its majority side (a tie: the type is left out), reported."""
    counts = pd.crosstab(df.label_value, df.side)
    majority = counts.idxmax(axis=1).where(counts.max(axis=1) * 2 > counts.sum(axis=1), "")
    disagree = [
        f"'{messages.printable(value)}' ({', '.join(f'{s} {n}' for s, n in row.items() if n)})"
        for value, row in counts.iterrows()
        if (row > 0).sum() > 1
    ]
    if disagree:
        messages.warn(
            f"{len(disagree)} type(s) with rows on both sides, kept on their majority side (a tie: left out): "
            + "; ".join(disagree)
        )
    ok = df.side == df.label_value.map(majority)
    steps.append(("on their type's side", int(ok.sum()), "" if ok.all() else f"left out {(~ok).sum()}: disagreeing"))
    return df[ok]


def choose_classes(cands, args, steps):
    """cands with its class folder in 'label': benign and malignant, or the type values with at least MIN_PER_CLASS
    usable photos (the rarer ones listed, or merged per side into 'other benign' / 'other malignant')."""
    if args.label_column in isic.SIDE_COLUMNS:
        return cands.assign(label=cands.side)
    counts = cands.label_value.value_counts()
    rare = counts[counts < args.min_per_class]
    if len(rare) and args.other:
        is_rare = cands.label_value.isin(rare.index)
        cands.loc[is_rare, "label_value"] = "other " + cands.side[is_rare]
        counts = cands.label_value.value_counts()
        rare = counts[counts < args.min_per_class]
    if len(rare):
        messages.warn(
            f"{len(rare)} value(s) of {args.label_column} with fewer than {args.min_per_class} usable photos left "
            f"out ({rare.sum()} photos): "
            f"{messages.counts_text(cands.label_value[cands.label_value.isin(rare.index)], 12)}"
            + ("" if args.other else "; --other merges them per side")
        )
    kept = cands[~cands.label_value.isin(rare.index)]
    steps.append(
        (f"of a type with >= {args.min_per_class} photos", len(kept), f"rare {rare.sum()}" if len(rare) else "")
    )
    check_sides_kept(cands, kept, args, steps)
    cands = kept
    taken = set()
    names = {v: folder_name(v, taken) for v in sorted(cands.label_value.unique())}
    return cands.assign(label=cands.label_value.map(names))


def check_sides_kept(cands, kept, args, steps):
    """Stop when the rare values left out took a whole side: a column of ids (lesion_id) was '0 with an image file'."""
    for side in [s for s in dataset.SIDES if cands.side.eq(s).any() and not kept.side.eq(s).any()]:
        values = cands.label_value[cands.side == side]
        ids = ": about one a value, ids rather than types" if values.nunique() * 2 > len(values) else ""
        print_steps(steps, f"--label-column {args.label_column}: none of its {values.nunique()} {side} values "
                    f"({len(values)} photos{ids}) has --min-per-class {args.min_per_class} usable photos; pass a "
                    "column of lesion types such as diagnosis_3, or lower --min-per-class")  # fmt: skip


def contradicting_copies(cands):
    """The ids of photos that are byte-identical copies under ids with different labels (files of equal size are
    hashed; the rest cannot be copies; files that are not images are left to the decoding, which counts them)."""
    sizes = cands.path.map(os.path.getsize)
    same_size = cands.loc[sizes.duplicated(keep=False).to_numpy()]
    same_size = same_size.loc[np.array([is_image(path) for path in same_size.path], dtype=bool)]
    digests = same_size.path.map(files.file_sha256)
    labels = same_size.groupby(digests).label_value.transform("nunique")
    return set(same_size.isic_id[labels > 1])


def is_image(path):
    """Whether the file's header is an image's (a cheap look, nothing decoded)."""
    try:
        photos.image_size(path)
    except Exception:
        return False
    return True


def check_usable(args, steps, typed, losses, cands, chosen=None, decoded=0, unreadable=()):
    """Stop when a side has no usable image (or fewer than two classes are left), or less than MIN_KEPT of the rows
    survive the unexpected losses (labels outside ISIC's words, conflicts, bad ids, missing or unreadable images);
    warn when a class is short."""
    now = cands if chosen is None else chosen
    seen = "; ".join(f"{col} {messages.counts_text(typed[col])}" for col in isic.SIDE_COLUMNS if col in typed)
    for side in dataset.SIDES:
        if not now.side.eq(side).any():
            readable = ", 0 readable" if chosen is not None else ""
            print_steps(
                steps,
                f"no usable {side} images: {typed.side.eq(side).sum()} {side} rows, "
                f"{cands.side.eq(side).sum()} with an image file{readable}; labels seen: {seen or 'none'}",
            )
    for label, n in now.label.value_counts().items() if chosen is not None else []:
        if n < args.n_per_class:
            messages.warn(f"only {n} usable {label} images, fewer than N_PER_CLASS: using them all")
    base, kept = len(cands) + sum(n for _, n, _ in losses), len(cands) * (1 - len(unreadable) / max(decoded, 1))
    losses = losses + [(f"unreadable (of {decoded} decoded)", len(unreadable), messages.first_few(unreadable))]
    if base and kept < args.min_kept * base:
        causes = "; ".join(f"{cause} {n} ({what})" for cause, n, what in losses if n)
        about = "about " if decoded else ""
        print_steps(
            steps,
            f"only {about}{kept:.0f} of the {base} rows that should be usable survive ({kept / base:.0%} "
            f"< --min-kept {args.min_kept}): {causes}; fix the export, or pass --min-kept 0 to use what is left "
            "(e.g. when the metadata lists more images than were downloaded)",
        )


def print_steps(steps, error=None):
    print("\nsummary\n" + "\n".join(f"  {step:<44}{n:>7}  {why}" for step, n, why in steps))
    if error:
        raise messages.UserError(error)


def write_splits(chosen, tmp):
    """Move the decoded images into tmp/<split>/<class>/ and write tmp/manifest.csv; returns the manifest."""
    for split, label in set(zip(chosen.split, chosen.label)):
        os.makedirs(os.path.join(tmp, split, label), exist_ok=True)
    for row in chosen.itertuples():
        os.rename(os.path.join(tmp, row.file), os.path.join(tmp, row.split, row.label, row.file))
    manifest = chosen.assign(
        file=chosen.split + "/" + chosen.label + "/" + chosen.file, split_order=chosen.split.map(dataset.SPLITS.index)
    )
    manifest = manifest.rename(columns={"path": "source_file"}).sort_values(["split_order", "label", "isic_id"])
    columns = [
        "isic_id",
        "split",
        *KEPT[1:],
        *[c for c in isic.CARD_COLUMNS if c in chosen],
        "source_file",
        "sha256",
        "width",
        "height",
        "file",
    ]
    manifest = manifest[columns]
    files.atomic_write(os.path.join(tmp, dataset.MANIFEST), lambda path: manifest.to_csv(path, index=False), "manifest")
    return manifest


def report(manifest, steps, args, notes):
    """The summary: every step with what it left out, photos per split and class, and who and what they show."""
    print_steps(steps)
    table = pd.crosstab(manifest.split, manifest.label, margins=True, margins_name="total")
    print(table.reindex([s for s in dataset.SPLITS if s in table.index] + ["total"]).to_string())
    print("\nwhom and what the photos show, per split (unknown: not in the metadata)")
    for factor, by_split in isic.factor_counts(manifest, "split").items():
        print(f"  {factor}")
        for split in [s for s in dataset.SPLITS if s in by_split]:
            total = sum(by_split[split].values())
            common = sorted(by_split[split].items(), key=lambda item: -item[1])[:6]
            print(f"    {split:<6}" + ", ".join(f"{messages.printable(value)} {n / total:.0%}" for value, n in common))
    for note in notes:
        print(note)


def parse_args(argv=None):
    """The flags, each checked before any slow work."""
    args = flags.parse_flags(globals(), argv, nullable={"RESIZE_TO"})
    bad = [t for t in args.image_types if t not in isic.IMAGE_TYPES] + [""]
    flags.check(not bad[0], "--image-types", repr(bad[0]), "use ISIC's: " + ", ".join(map(repr, isic.IMAGE_TYPES)))
    val, test = args.val_fraction, args.test_fraction
    flags.check(
        val + test <= 0.9 + 1e-9, "--test-fraction", test, f"use at most {0.9 - val:.2f} with --val-fraction {val}"
    )
    folders.check_output_folder(args.dataset_dir, "--dataset-dir", [args.images_dir, args.metadata_csv])
    folders.check_replaceable(args.dataset_dir, "--dataset-dir", "prepare_dataset.py", "dataset")
    flags.check_writable(os.path.dirname(os.path.abspath(args.dataset_dir)), "--dataset-dir", folder=True)
    args.dataset_dir = os.path.normpath(args.dataset_dir)
    return args


def with_photo_files(df, args, out, steps, losses):
    """The rows whose photo is a regular file inside the export (none of ours: out), and not one photo under ids
    with different labels; each step and what it left out counted in steps and losses."""
    found, no_file, copies = isic.image_files(df.isic_id, args.images_dir, lambda path: re.fullmatch(out, path))
    cands = df[df.isic_id.isin(found.keys())].reset_index(drop=True)
    cands = cands.assign(path=cands.isic_id.map(found), label_column=args.label_column)
    losses += no_file
    why = [f"{cause} {n}: {what}" for cause, n, what in no_file]
    if copies:
        why.append(f"{copies} byte-identical copies of a photo used once")
    steps.append(("with an image file", len(cands), "; ".join(why)))
    copies = contradicting_copies(cands)
    losses.append(("the same photo under ids with different labels", len(copies), messages.first_few(sorted(copies))))
    cands = cands[~cands.isic_id.isin(copies)].reset_index(drop=True)
    steps.append(("no photo with different labels", len(cands), f"left out {len(copies)}" if copies else ""))
    return cands


def decoded_photos(cands, args, tmp, steps):
    """(chosen, unreadable, duplicates): the photos decoded, hashed and shrunk into tmp, balanced in SEED order;
    the steps counted."""
    chosen, unreadable, dups = isic.decode_balanced(
        cands, args.n_per_class, args.seed, tmp, args.resize_to, args.workers
    )
    decoded = len(chosen) + len(unreadable) + len(dups)
    steps.append(("decoded (sampled in SEED order)", decoded, ""))
    unreadable_text = f"unreadable {len(unreadable)}: " + messages.first_few(unreadable, 5) if unreadable else ""
    steps.append(("readable", decoded - len(unreadable), unreadable_text))
    dups_text = f"{len(dups)} duplicate images kept once: " + messages.first_few(dups, 5) if dups else ""
    steps.append(("distinct images", len(chosen), dups_text))
    return chosen, unreadable, dups


def read_rows(args):
    """(the metadata.csv files read, their rows): METADATA_CSV, or each metadata.csv under IMAGES_DIR where it is
    missing (said); neither, or no IMAGES_DIR, is an error with where to download an export."""
    paths = isic.metadata_files(args.metadata_csv, args.images_dir)
    if not paths or not os.path.isdir(args.images_dir):
        missing = args.images_dir if paths else f"{args.metadata_csv} (nor a metadata.csv under {args.images_dir})"
        missing = messages.printable(missing)
        raise messages.UserError(f"{missing} not found; " + download_hint(args.image_types, args.images_dir))
    if paths != [args.metadata_csv]:
        listed = ", ".join(map(messages.printable, paths))
        metadata_csv, images_dir = messages.printable(args.metadata_csv), messages.printable(args.images_dir)
        print(f"no {metadata_csv}; reading the {len(paths)} metadata.csv under {images_dir}: {listed}")
    columns = ["isic_id", *isic.SIDE_COLUMNS, "lesion_id", "patient_id", args.label_column, *isic.CARD_COLUMNS]
    return paths, isic.read_metadata(paths, columns)


def unused_notes(cands, chosen, unreadable, dups, manifest, args):
    """A note per class with usable photos that N_PER_CLASS left undecoded: how many, and the --n-per-class that
    uses them all."""
    decoded_ids = set(chosen.isic_id) | set(dups) | {item.split()[0] for item in unreadable}
    unused = cands[~cands.isic_id.isin(decoded_ids)].label.value_counts()
    notes = []
    for label, n in unused.items():
        total = n + (manifest.label == label).sum()
        notes.append(
            f"note: {n} usable {label} images left unused (N_PER_CLASS {args.n_per_class}): pass "
            f"--n-per-class {total} to use them all"
        )
    return notes


def main(argv=None):
    args, start = parse_args(argv), time.time()
    out = re.escape(os.path.realpath(args.dataset_dir)) + r"(\.(tmp|old)-\d+)?"

    # one run per folder: the dataset is written beside the previous one and swapped in when all went well
    with folders.replaced_folder(args.dataset_dir, "prepare_dataset.py", "dataset") as tmp:
        # metadata: the usable rows, and why the others were left out
        paths, rows = read_rows(args)
        df, typed, steps, losses = filter_rows(rows, args.image_types, args.label_column)
        for col in [col for col in ("lesion_id", "patient_id") if col not in df]:
            print(f"no {col} column: images are grouped without it")
            df[col] = ""

        # image files: regular files inside the export only; photos under two ids with different labels left out
        cands = with_photo_files(df, args, out, steps, losses)
        cands = choose_classes(cands, args, steps).reset_index(drop=True)
        check_usable(args, steps, typed, losses, cands)

        # decode, hash and shrink, balanced; check again
        chosen, unreadable, dups = decoded_photos(cands, args, tmp, steps)
        decoded = len(chosen) + len(unreadable) + len(dups)
        check_usable(args, steps, typed, losses, cands, chosen, decoded, unreadable)

        # split by lesion and patient groups, into the class folders, with the export's credits
        labels, groups = chosen.label.to_numpy(), isic.group_ids(chosen).to_numpy()
        chosen["split"] = isic.split_groups(labels, groups, args.val_fraction, args.test_fraction, args.seed)
        manifest = write_splits(chosen, tmp)
        notes = [isic.copy_credits(paths, chosen, tmp) + f" into {messages.printable(args.dataset_dir)}/"]
        if args.keep_other_types and "image_type" in rows:  # what the familiarity check learns to tell apart
            kept = other_types.keep(
                rows, args.image_types, args.keep_other_types, args.images_dir, tmp,
                lambda path: re.fullmatch(out, path), args.seed, args.resize_to, args.workers,
            )  # fmt: skip
            where = f"in {messages.printable(args.dataset_dir)}/{other_types.FOLDER}/"
            notes.append(kept.replace(f"in {other_types.FOLDER}/", where))
        if args.shards:
            notes.append(shard_format.write_shards(tmp, manifest, args.shard_mb))

    notes += unused_notes(cands, chosen, unreadable, dups, manifest, args)
    report(manifest, steps, args, notes)
    seconds = time.time() - start
    dataset_dir = messages.printable(args.dataset_dir)
    print(f"wrote {len(manifest)} images to {dataset_dir}/ and {dataset_dir}/manifest.csv in {seconds:.0f} s")


if __name__ == "__main__":
    sys.exit(interrupts.run_script(main, "interrupted; the previous dataset is untouched"))
