"""
Build dataset/ from an ISIC Archive export: keep one image type and the definite labels, sample a balanced
set, split it by lesion and patient, and shrink the photos.

    isic image download --search 'image_type:"clinical: overview" AND diagnosis_1:Benign' --limit 300 \
        isic_images/benign
    isic image download --search 'image_type:"clinical: overview" AND diagnosis_1:Malignant' --limit 300 \
        isic_images/malignant
    python prepare_dataset.py                  # reads isic_images/**/metadata.csv and the images beside them
    python prepare_dataset.py --image-types dermoscopic --n-per-class 500
    python make_demo_data.py && python prepare_dataset.py --metadata-csv demo_data/metadata.csv --images-dir demo_data

Rows of IMAGE_TYPES labelled Benign/Malignant (diagnosis_1 or the legacy benign_malignant, any case) with an image
file are decoded in SEED order, in rounds, until each class has N_PER_CLASS distinct images; rows sharing a lesion
or a patient stay in one split. A run that would lose a class or keep less than MIN_KEPT of the rows stops with one
line; a failure, a full disk, a kill or Ctrl-C leave the previous dataset byte-identical (dataset.tmp-<pid>).
"""

import glob
import os
import re
import shutil
import time
import warnings

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.model_selection import StratifiedGroupKFold
from tqdm import tqdm

from skinlesion import cli, dataset, files, isic, photos

# -----------------------------------------------------------------------------
METADATA_CSV = "metadata.csv"  # the export's metadata; if absent, every metadata.csv under IMAGES_DIR is read
IMAGES_DIR = "isic_images"  # folder searched, sub-folders too, for the <isic_id>.<ext> images
DATASET_DIR = "dataset"  # output folder (not holding the export), replaced as a whole on every run
IMAGE_TYPES = ["clinical: overview"]  # ISIC image_type values to keep, e.g. dermoscopic (a wrong one lists them all)
N_PER_CLASS = 200  # images per class at most, >= 1 (all there are, if fewer)
VAL_FRACTION = 0.15  # share of the groups for validation, 0 to 0.9 in steps of 0.05 (0: no val split)
TEST_FRACTION = 0.15  # share of the groups for test, likewise, val + test <= 0.9 (0: no test split)
RESIZE_TO = 256  # shorter side in px, >= 1, never upscaled; None (--resize-to none): copy the files as they are
MIN_KEPT = 0.5  # 0 to 1: stop when less of the rows survive bad labels, ids and image files; 0 = never
SEED = 42  # sampling and split, 0 to 2**32 - 1
WORKERS = os.cpu_count()  # processes that decode images, >= 1 (1: no pool)
# -----------------------------------------------------------------------------
_ISIC_IMAGE_TYPES = [
    "dermoscopic",
    "clinical: overview",
    "clinical: close-up",
    "TBP tile: close-up",
    "TBP tile: overview",
    "RCM: macroscopic",
    "RCM: tile",
    "RCM: mosaic",
    "clinical",
    "overview",
]
_LEGACY_TYPES = {"clinical: overview": "overview", "clinical: close-up": "clinical"}  # names before July 2023
_LABELS = ["diagnosis_1", "benign_malignant"]  # current and legacy label column, read in any case
_UNDECIDED = ["indeterminate", "indeterminate/benign", "indeterminate/malignant", "empty"]  # expected losses
_COLUMNS = ["isic_id", *_LABELS, "image_type", "lesion_id", "patient_id"]
_ISIC_ID, _SPLITS = r"ISIC_\d{7}", ["train", "val", "test"]


def download_hint(image_types, images_dir):
    query = " OR ".join(f'image_type:"{t}"' for t in image_types)
    query = f"({query})" if len(image_types) > 1 else query
    return (
        f"download an export with: isic image download --search '{query} AND diagnosis_1:Benign' --limit 300 "
        f"{os.path.join(images_dir, 'benign')}, and the same with diagnosis_1:Malignant into "
        f"{os.path.join(images_dir, 'malignant')} (pip install isic-cli); or try python make_demo_data.py"
    )


def read_metadata(metadata_csv, images_dir, image_types):
    """The needed columns of metadata_csv, or if it is absent of every metadata.csv under images_dir (one per 'isic
    image download'), concatenated, as stripped strings."""
    paths = (
        [metadata_csv]
        if files.file_kind(metadata_csv) != "missing"
        else sorted(glob.glob(os.path.join(glob.escape(images_dir), "**", "metadata.csv"), recursive=True))
    )
    if not paths or not os.path.isdir(images_dir):
        missing = images_dir if paths else f"{metadata_csv} (nor a metadata.csv under {images_dir})"
        cli.die(f"{missing} not found; " + download_hint(image_types, images_dir))
    if paths != [metadata_csv]:
        print(f"no {metadata_csv}; reading the {len(paths)} metadata.csv under {images_dir}: {', '.join(paths)}")
    frames = [isic.read_table(path, _COLUMNS, "an ISIC export's metadata.csv") for path in paths]
    for path, df in zip(paths, frames):
        if "isic_id" not in df:
            cli.die(f"{path} has no isic_id column; use the metadata.csv that 'isic image download' writes")
    return pd.concat(frames, ignore_index=True).fillna("").apply(lambda s: s.str.strip())


def label_rows(df):
    """Per row 'benign' or 'malignant' (any case, spaces around ignored), else why not: the value in quotes
    ('Indeterminate', ...), 'empty', or 'conflicting' (diagnosis_1 and benign_malignant disagree). Never guessed."""
    if not set(_LABELS) & set(df):
        cli.die(
            "the metadata has neither diagnosis_1 nor benign_malignant, so no labels; download the export "
            "again with 'isic image download' (its metadata.csv has diagnosis_1)"
        )
    new, old = [
        (v.str.lower().map(dict(zip(dataset.SIDES, dataset.SIDES))).fillna("'" + v + "'").where(v != "", ""))
        for v in (df[c].str.strip() if c in df else pd.Series("", index=df.index) for c in _LABELS)
    ]
    label = new.where(new != "", old).replace("", "empty")
    return label.mask((new != "") & (old != "") & (new.str.lower() != old.str.lower()), "conflicting")


def filter_rows(df, image_types):
    """(usable rows with a label column, the rows of the wanted image types, summary steps [(step, rows left,
    what was left out)], rows lost for an unexpected reason [(cause, rows, examples)])."""
    steps, allowed = [("rows read", len(df), "")], set(image_types) | {_LEGACY_TYPES.get(t, t) for t in image_types}

    def keep(df, ok, step, why):
        steps.append((step, int(ok.sum()), "" if ok.all() else why))
        return df[ok]

    if "image_type" in df:
        ok = df.image_type.isin(allowed)
        df = keep(
            df, ok, "image_type " + " or ".join(sorted(allowed)), "left out: " + cli.counts_text(df.image_type[~ok])
        )
    else:
        steps.append(("image_type", len(df), "no image_type column: all rows kept"))
    typed = df = df.assign(label=label_rows(df))
    ok = df.label.isin(dataset.SIDES)
    odd = ~ok & ~df.label.str.strip("'").str.lower().isin(_UNDECIDED)  # not one of ISIC's words for 'not decided'
    losses = [("label outside ISIC's vocabulary or in conflict", odd.sum(), cli.counts_text(df.label[odd], 3))]
    df = keep(df, ok, "with a definite label", "left out: " + cli.counts_text(df.label[~ok]))
    ok = df.isic_id.str.fullmatch(_ISIC_ID)
    losses.append(("invalid isic_id", (~ok).sum(), cli.first_few(df.isic_id[~ok].map(repr))))
    df = keep(df, ok, "with a valid isic_id", f"refused {(~ok).sum()}: {losses[-1][2]}")
    ok = ~df.isic_id.duplicated()
    return keep(df, ok, "unique isic_id", f"{(~ok).sum()} repeated rows kept once"), typed, steps, losses


def image_files(ids, images_dir, dataset_dir):
    """({isic_id: path} of the regular image files under images_dir (one walk; the first of an id's files), the ids
    without one [(cause, rows, examples)], extra files); refused: symlinks out of images_dir, named pipes and such."""
    root, out = os.path.realpath(images_dir), re.escape(os.path.realpath(dataset_dir)) + r"(\.(tmp|old)-\d+)?"
    found, refused, extra = {}, {}, 0
    for dirpath, dirnames, filenames in os.walk(images_dir):
        dirnames[:] = sorted(d for d in dirnames if not re.fullmatch(out, os.path.realpath(os.path.join(dirpath, d))))
        for name in sorted(filenames):
            stem, path = os.path.splitext(name)[0], os.path.join(dirpath, name)
            if not re.fullmatch(_ISIC_ID, stem) or not photos.is_image_file(name):
                continue
            if stem in found:
                extra += 1
            elif os.path.islink(path) and os.path.commonpath([root, os.path.realpath(path)]) != root:
                refused[stem] = (f"symlink out of {images_dir}", stem)
            elif files.file_kind(path):
                refused[stem] = ("not a regular file", f"{stem} ({files.file_kind(path)})")
            else:
                found[stem], _ = path, refused.pop(stem, None)
    why = [refused.get(i, ("missing", i)) for i in ids if i not in found]
    return (
        found,
        [
            (cause, len(items), cli.first_few(items))
            for cause in dict.fromkeys(c for c, _ in why)
            for items in [[i for c, i in why if c == cause]]
        ],
        extra,
    )


def process_image(job):
    """Worker: hash, decode and shrink one image into out_dir; error: why it is unusable; OSError: out_dir unwritable"""
    isic_id, src, out_dir, resize_to = job
    if files.file_kind(src):  # turned into a named pipe since the index: opening it would block forever
        return dict(isic_id=isic_id, error="not a regular file")
    try:
        sha256 = files.file_sha256(src)
        with Image.open(src) as img:
            width, height = img.size
        img = photos.load_image(src, min_side=resize_to)  # upright RGB; raises on anything unreadable
    except Exception as e:  # truncated, empty, not an image, decompression bomb...: counted, never fatal
        return dict(isic_id=isic_id, error=type(e).__name__)
    name = isic_id + (".jpg" if resize_to else os.path.splitext(src)[1].lower())
    scale = resize_to / min(img.size) if resize_to else 1
    try:
        if resize_to is None:
            shutil.copyfile(src, os.path.join(out_dir, name))
        else:
            img = (
                img.resize(
                    (max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                    Image.LANCZOS,
                    reducing_gap=3.0,
                )
                if scale < 1
                else img
            )
            img.save(os.path.join(out_dir, name), quality=95)
    except OSError as e:  # a full disk, a quota: the dataset's fault, not the image's
        raise OSError(
            f"could not write {cli.printable(os.path.join(out_dir, name))} ({e.strerror or e}); free some "
            "disk space or pass another --dataset-dir"
        ) from None
    return dict(isic_id=isic_id, sha256=sha256, width=width, height=height, file=name, error="")


def decode_balanced(cands, n_per_class, seed, out_dir, resize_to, workers):
    """Decode the candidates in a SEED-shuffled order per class, in rounds, until n_per_class readable and
    distinct (sha256 of the file) images per class. Returns (chosen rows, unreadable, duplicates)."""
    rng = np.random.default_rng(seed)
    queue = {c: list(rng.permutation(cands.index[cands.label == c])) for c in dataset.SIDES}
    chosen, seen, unreadable, duplicates = [], set(), [], []
    tried, usable = dict.fromkeys(dataset.SIDES, 0), dict.fromkeys(dataset.SIDES, 0)
    with cli.worker_pool(workers) as pool, tqdm(total=0, desc="decoding", unit="img", disable=cands.empty) as bar:
        while True:  # a round: the next candidates of each class, as many as it still lacks
            batch = [i for c in dataset.SIDES for i in queue[c][tried[c] : tried[c] + n_per_class - usable[c]]]
            if not batch:
                break
            for c in dataset.SIDES:
                tried[c] += n_per_class - usable[c]
            bar.total += len(batch)
            jobs = [(cands.isic_id[i], cands.path[i], out_dir, resize_to) for i in batch]
            chunk = max(1, min(16, len(jobs) // (4 * workers)))
            for i, rec in zip(batch, pool.imap(process_image, jobs, chunk) if pool else map(process_image, jobs)):
                bar.update()
                if rec["error"]:
                    unreadable.append(f"{rec['isic_id']} ({rec['error']})")
                elif rec["sha256"] in seen:
                    duplicates.append(rec["isic_id"])
                    os.remove(os.path.join(out_dir, rec["file"]))
                else:
                    seen.add(rec["sha256"])
                    chosen.append(dict(cands.loc[i], **rec))
                    usable[cands.label[i]] += 1
    return pd.DataFrame(chosen, columns=[*cands.columns, "sha256", "width", "height", "file"]), unreadable, duplicates


def group_ids(df):
    """A group per row: connected components (union-find) of rows sharing a lesion_id or a patient_id (or none)."""
    parent = {}

    def find(x):
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]  # path halving
            x = parent[x]
        return x

    for isic_id, lesion, patient in zip(df.isic_id, df.lesion_id, df.patient_id):
        for key in [f"lesion {lesion}"] * bool(lesion) + [f"patient {patient}"] * bool(patient):
            parent[find(key)] = find(isic_id)
    return pd.Series([find(i) for i in df.isic_id], index=df.index)


def split_groups(labels, groups, val_fraction, test_fraction, seed):
    """'train', 'val' or 'test' per row: StratifiedGroupKFold cuts the groups into (up to) 20 folds of about the
    same class balance; the first folds are test, the next val, the rest train. Each split needs both classes."""
    n_folds = min(20, len(set(groups)), max(pd.Series(labels).value_counts()))  # as StratifiedGroupKFold needs
    n_test, n_val = (max(1, round(f * n_folds)) if f else 0 for f in (test_fraction, val_fraction))
    if n_test + n_val == 0:
        return np.full(len(labels), "train")
    if n_test + n_val >= n_folds:
        cli.die(
            f"only {len(set(groups))} lesion/patient groups, too few for val and test splits; "
            "add images, or set --val-fraction and --test-fraction to 0"
        )
    fold = np.zeros(len(labels), int)
    with warnings.catch_warnings():  # "the least populated class has only n members": expected, harmless
        warnings.simplefilter("ignore", UserWarning)
        cv = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        for k, (_, idx) in enumerate(cv.split(labels, labels, groups)):
            fold[idx] = k
    split = np.where(fold < n_test, "test", np.where(fold < n_test + n_val, "val", "train"))
    for s, c in [(s, c) for s in set(split) for c in dataset.SIDES if not (labels[split == s] == c).any()]:
        cli.die(
            f"the {s} split would have no {c} images: the {(labels == c).sum()} {c} images are only "
            f"{len(set(groups[labels == c]))} groups; add {c} images, or lower --val-fraction/--test-fraction"
        )
    return split


def check_usable(args, steps, typed, losses, cands, chosen=None, decoded=0, unreadable=()):
    """Stop when a class has no usable image, or less than MIN_KEPT of the rows survive the unexpected losses (labels
    outside ISIC's words, conflicts, bad ids, missing or unreadable images); warn when a class is short."""
    seen = (
        "; ".join(f"{col} {cli.counts_text(typed[col])}" for col in _LABELS if col in typed)
        if len(typed)
        else f"none, as no row has image type {' or '.join(args.image_types)} (see --image-types)"
    )
    for c, n in [(c, (cands if chosen is None else chosen).label.eq(c).sum()) for c in dataset.SIDES]:
        if n == 0:
            print_steps(
                steps,
                f"no usable {c} images: {typed.label.eq(c).sum()} {c} rows, {cands.label.eq(c).sum()} "
                f"with an image file{', 0 readable' * (chosen is not None)}; labels seen: {seen}",
            )
        if chosen is not None and n < args.n_per_class:
            cli.warn(f"only {n} usable {c} images, fewer than N_PER_CLASS: using them all")
    base, kept = len(cands) + sum(n for _, n, _ in losses), len(cands) * (1 - len(unreadable) / max(decoded, 1))
    losses = losses + [(f"unreadable (of {decoded} decoded)", len(unreadable), cli.first_few(unreadable))]
    if base and kept < args.min_kept * base:
        causes = "; ".join(f"{cause} {n} ({what})" for cause, n, what in losses if n)
        print_steps(
            steps,
            f"only {'about ' * bool(decoded)}{kept:.0f} of the {base} rows that should be usable "
            f"survive ({kept / base:.0%} < --min-kept {args.min_kept}): {causes}; fix the export, or pass "
            "--min-kept 0 to use what is left (e.g. when the metadata lists more images than were downloaded)",
        )


def print_steps(steps, error=None):
    print("\nsummary\n" + "\n".join(f"  {step:<44}{n:>7}  {why}" for step, n, why in steps))
    if error:
        cli.die(error)


def write_splits(chosen, tmp):
    """Move the decoded images into tmp/<split>/<class>/ and write tmp/manifest.csv; returns the manifest."""
    for split, c in {(s, c) for s in chosen.split for c in dataset.SIDES}:
        os.makedirs(os.path.join(tmp, split, c))
    for row in chosen.itertuples():
        os.rename(os.path.join(tmp, row.file), os.path.join(tmp, row.split, row.label, row.file))
    manifest = (
        chosen.assign(file=chosen.split + "/" + chosen.label + "/" + chosen.file)
        .rename(columns={"path": "source_file"})
        .sort_values(["split", "label", "isic_id"], key=lambda s: s.map(_SPLITS.index) if s.name == "split" else s)[
            ["isic_id", "split", "label", "lesion_id", "patient_id", "source_file", "sha256", "width", "height", "file"]
        ]
    )
    files.atomic_write(os.path.join(tmp, "manifest.csv"), lambda path: manifest.to_csv(path, index=False))
    return manifest


def is_earlier_dataset(folder):
    """A dataset/ written before datasets carried our mark: its manifest.csv starts as ours does."""
    manifest = os.path.join(folder, "manifest.csv")
    if files.file_kind(manifest):
        return False
    with open(manifest, "rb") as f:
        return f.readline().startswith(b"isic_id,split,label")


def parse_args(argv=None):
    """The flags, each checked before any slow work."""
    args = cli.parse_flags(globals(), argv, nullable={"RESIZE_TO"})
    bad = [t for t in args.image_types if t not in _ISIC_IMAGE_TYPES] + [""]
    cli.check(not bad[0], "--image-types", repr(bad[0]), "use ISIC's: " + ", ".join(map(repr, _ISIC_IMAGE_TYPES)))
    val, test, size = args.val_fraction, args.test_fraction, args.resize_to
    for flag, value, ok, wanted in [
        ("n-per-class", args.n_per_class, cli.in_range(args.n_per_class, 1), "a whole number >= 1"),
        ("val-fraction", val, cli.in_range(val, 0, 0.9), "0 (no val split) to 0.9"),
        ("test-fraction", test, cli.in_range(test, 0, 0.9), "0 (no test split) to 0.9"),
        ("test-fraction", test, val + test <= 0.9 + 1e-9, f"at most {0.9 - val:.2f} with --val-fraction {val}"),
        ("resize-to", size, size is None or cli.in_range(size, 1), "a size >= 1 px, or none (copy the files)"),
        ("min-kept", args.min_kept, cli.in_range(args.min_kept, 0, 1), "a share from 0 (never stop) to 1"),
        ("seed", args.seed, cli.in_range(args.seed, 0, 2**32 - 1), "a whole number >= 0 (< 2**32)"),
        ("workers", args.workers, cli.in_range(args.workers, 1, 1024), "1 to 1024 processes"),
    ]:
        cli.check(ok, "--" + flag, value, "use " + wanted)
    files.check_output_folder(args.dataset_dir, "--dataset-dir", [args.images_dir, args.metadata_csv])
    files.check_replaceable(args.dataset_dir, "--dataset-dir", "prepare_dataset.py", legacy=is_earlier_dataset)
    cli.check_writable(os.path.dirname(os.path.abspath(args.dataset_dir)), "--dataset-dir", folder=True)
    args.dataset_dir = os.path.normpath(args.dataset_dir)
    return args


def main(argv=None):
    args, start = parse_args(argv), time.time()

    # one run per folder: the dataset is written beside the previous one and swapped in when all went well
    with files.replaced_folder(args.dataset_dir, "prepare_dataset.py") as tmp:
        # metadata: the usable rows, and why the others were left out
        metadata = read_metadata(args.metadata_csv, args.images_dir, args.image_types)
        df, typed, steps, losses = filter_rows(metadata, args.image_types)
        for col in [col for col in ("lesion_id", "patient_id") if col not in df]:
            print(f"no {col} column: images are grouped without it")
            df[col] = ""

        # image files: regular files inside the export only; both classes needed, and most of the rows
        found, no_file, extra = image_files(df.isic_id, args.images_dir, args.dataset_dir)
        cands = df[df.isic_id.isin(found.keys())].reset_index(drop=True)[
            ["isic_id", "label", "lesion_id", "patient_id"]
        ]
        cands["path"], losses = cands.isic_id.map(found), losses + no_file
        why = [f"{cause} {n}: {what}" for cause, n, what in no_file] + [f"{extra} more files for an id ignored"][:extra]
        steps.append(("with an image file", len(cands), "; ".join(why)))
        check_usable(args, steps, typed, losses, cands)

        # decode, hash and shrink, balanced; check again
        chosen, unreadable, dups = decode_balanced(
            cands, args.n_per_class, args.seed, tmp, args.resize_to, args.workers
        )
        decoded = len(chosen) + len(unreadable) + len(dups)
        steps += [
            ("decoded (sampled in SEED order)", decoded, ""),
            (
                "readable",
                decoded - len(unreadable),
                bool(unreadable) * f"unreadable {len(unreadable)}: " + cli.first_few(unreadable, 5),
            ),
            (
                "distinct images",
                len(chosen),
                bool(dups) * f"{len(dups)} duplicate images kept once: " + cli.first_few(dups, 5),
            ),
        ]
        check_usable(args, steps, typed, losses, cands, chosen, decoded, unreadable)

        # split by lesion and patient groups, into the class folders
        chosen["split"] = split_groups(
            chosen.label.to_numpy(), group_ids(chosen).to_numpy(), args.val_fraction, args.test_fraction, args.seed
        )
        manifest = write_splits(chosen, tmp)

    # report
    print_steps(steps)
    table = pd.crosstab(manifest.split, manifest.label, margins=True, margins_name="total")
    print(table.reindex([s for s in _SPLITS if s in table.index] + ["total"]).to_string())
    print(
        f"wrote {len(manifest)} images to {args.dataset_dir}/ and {args.dataset_dir}/manifest.csv "
        f"in {time.time() - start:.0f} s"
    )


if __name__ == "__main__":
    cli.run_script(main, "interrupted; the previous dataset is untouched")
