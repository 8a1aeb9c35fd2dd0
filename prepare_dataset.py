"""
Build dataset/ from an ISIC Archive export: keep one image type and the definite labels, sample a balanced
set, split it by lesion and patient, and shrink the photos.

    isic image download --search 'image_type:"clinical: overview" AND diagnosis_1:Benign' --limit 300 isic_images/benign
    isic image download --search 'image_type:"clinical: overview" AND diagnosis_1:Malignant' --limit 300 isic_images/malignant
    python prepare_dataset.py                  # reads isic_images/**/metadata.csv and the images beside them
    python prepare_dataset.py --image-types dermoscopic --n-per-class 500
    python prepare_dataset.py --demo           # writes a synthetic export to demo_data/ and prepares it

Candidates: rows of IMAGE_TYPES (pre-2023 names too), labelled Benign/Malignant (diagnosis_1, or the legacy
benign_malignant), with a valid, unique isic_id and an image file under IMAGES_DIR. Each class is shuffled by
SEED and decoded in that order (WORKERS processes) in rounds until it has N_PER_CLASS readable, distinct
images, so the balance holds among usable images and a huge export costs about 2 x N_PER_CLASS decodes.
Rows sharing a lesion_id or a patient_id form one group, so no lesion and no patient spans two splits;
StratifiedGroupKFold splits the groups. The dataset is built in dataset.tmp-<pid> and swapped in at the
end: a crash or Ctrl-C leaves the previous one intact.
"""
import argparse
import glob
import hashlib
import os
import re
import shutil
import signal
import sys
import time
import warnings
from contextlib import nullcontext
from multiprocessing import Pool

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFilter
from sklearn.model_selection import StratifiedGroupKFold
from tqdm import tqdm

import model

# -----------------------------------------------------------------------------
METADATA_CSV = "metadata.csv"  # the export's metadata; if absent, every metadata.csv under IMAGES_DIR is read
IMAGES_DIR = "isic_images"  # folder searched, sub-folders too, for the <isic_id>.<ext> images
DATASET_DIR = "dataset"  # output folder, replaced as a whole on every run
IMAGE_TYPES = ["clinical: overview"]  # image_type values to keep, one or more of _ISIC_IMAGE_TYPES
N_PER_CLASS = 200  # images per class at most (all there are, if fewer)
VAL_FRACTION = 0.15  # share of the groups for validation, 0 to 0.9 in steps of 0.05 (0: no val split)
TEST_FRACTION = 0.15  # share of the groups for test, likewise (0: no test split)
RESIZE_TO = 256  # shorter side in px, never upscaled; None (--resize-to none): copy the files as they are
SEED = 42  # sampling, split and demo images
WORKERS = os.cpu_count()  # processes that decode images (1: no pool)
DEMO = False  # write a synthetic ISIC export to DEMO_DIR and prepare DATASET_DIR from it
DEMO_DIR = "demo_data"  # where --demo writes its export, plus unseen/ photos for predict.py
DEMO_PHOTO_SIZE = 1600  # longer side of the demo photos in px
# -----------------------------------------------------------------------------
_ISIC_IMAGE_TYPES = ["dermoscopic", "clinical: overview", "clinical: close-up", "TBP tile: close-up",
                     "TBP tile: overview", "RCM: macroscopic", "RCM: tile", "RCM: mosaic", "clinical", "overview"]
_LEGACY_TYPES = {"clinical: overview": "overview", "clinical: close-up": "clinical"}  # names before July 2023
_COLUMNS = ["isic_id", "diagnosis_1", "benign_malignant", "image_type", "lesion_id", "patient_id"]
_ISIC_ID = r"ISIC_\d{7}"
_SPLITS = ["train", "val", "test"]


def download_hint(image_types, images_dir):
    query = " OR ".join(f'image_type:"{t}"' for t in image_types)
    query = f"({query})" if len(image_types) > 1 else query
    return (f"download an export with: isic image download --search '{query} AND diagnosis_1:Benign' --limit 300 "
            f"{os.path.join(images_dir, 'benign')}, and the same with diagnosis_1:Malignant into "
            f"{os.path.join(images_dir, 'malignant')} (pip install isic-cli); or try --demo")


def metadata_paths(metadata_csv, images_dir):
    """[metadata_csv], or if it is absent every metadata.csv under images_dir (one per 'isic image download')."""
    if os.path.isfile(metadata_csv):
        return [metadata_csv]
    paths = sorted(glob.glob(os.path.join(glob.escape(images_dir), "**", "metadata.csv"), recursive=True))
    if paths:
        print(f"no {metadata_csv}; reading the {len(paths)} metadata.csv under {images_dir}: {', '.join(paths)}")
    return paths


def read_metadata(paths):
    """The needed columns of one or more metadata.csv files, concatenated, as stripped strings. A file that is
    not UTF-8 is read as Windows-1252 (as Excel saves CSV), with a warning."""
    frames = []
    for path in paths:
        read = lambda encoding: pd.read_csv(path, usecols=lambda c: c in _COLUMNS, dtype=str, keep_default_na=False,
                                            encoding=encoding)
        try:
            with open(path, "rb") as f:
                if b"\0" in f.read(1 << 16):  # an image, an archive, UTF-16 text: not a CSV file
                    model.die(f"{path} holds binary data, not CSV text; it must be an ISIC export's metadata.csv")
            try:
                frames.append(read("utf-8-sig"))
            except UnicodeDecodeError:  # e.g. "Müller" in cp1252
                frames.append(read("cp1252"))
                model.warn(f"{path} is not UTF-8; read it as Windows-1252 (cp1252), as Excel saves CSV")
        except (OSError, ValueError) as e:
            model.die(f"cannot read {path} as CSV ({type(e).__name__}); it must be an ISIC export's metadata.csv")
        if "isic_id" not in frames[-1]:
            model.die(f"{path} has no isic_id column; use the metadata.csv that 'isic image download' writes")
    return pd.concat(frames, ignore_index=True).fillna("").apply(lambda s: s.str.strip())


def label_rows(df):
    """Per row 'benign' or 'malignant', else why not: the value in quotes ('Indeterminate', ...), 'empty', or
    'conflicting' (diagnosis_1 and benign_malignant disagree). Never guessed."""
    if "diagnosis_1" not in df and "benign_malignant" not in df:
        model.die("the metadata has neither diagnosis_1 nor benign_malignant, so no labels; download the export "
                  "again with 'isic image download' (its metadata.csv has diagnosis_1)")
    found = []
    for col, exact in (("diagnosis_1", ["Benign", "Malignant"]), ("benign_malignant", ["benign", "malignant"])):
        values = df[col] if col in df else pd.Series("", index=df.index)
        found.append(values.map(dict(zip(exact, model.CLASSES))).fillna("'" + values + "'").where(values != "", ""))
    new, old = found
    label = new.where(new != "", old).replace("", "empty")
    return label.mask((new != "") & (old != "") & (new.str.lower() != old.str.lower()), "conflicting")


def describe(values, most=6):
    counts = pd.Series(values).value_counts()
    return ", ".join(f"{k or 'empty'} {n}" for k, n in counts[:most].items()) + ", ..." * (len(counts) > most)


def filter_rows(df, image_types):
    """The usable rows, with a label column, and the summary steps [(step, rows left, what was left out)]."""
    steps = [("rows read", len(df), "")]

    def keep(df, ok, step, why):
        steps.append((step, int(ok.sum()), "" if ok.all() else why))
        return df[ok]
    allowed = set(image_types) | {_LEGACY_TYPES[t] for t in image_types if t in _LEGACY_TYPES}
    if "image_type" in df:
        ok = df.image_type.isin(allowed)
        df = keep(df, ok, "image_type " + " or ".join(sorted(allowed)), "left out: " + describe(df.image_type[~ok]))
    else:
        steps.append(("image_type", len(df), "no image_type column: all rows kept"))
    df = df.assign(label=label_rows(df))
    df = keep(df, df.label.isin(model.CLASSES), "with a definite label",
              "left out: " + describe(df.label[~df.label.isin(model.CLASSES)]))
    ok = df.isic_id.str.fullmatch(_ISIC_ID)
    df = keep(df, ok, "with a valid isic_id", f"refused {(~ok).sum()}: " + ", ".join(map(repr, df.isic_id[~ok][:3])))
    ok = ~df.isic_id.duplicated()
    return keep(df, ok, "unique isic_id", f"{(~ok).sum()} repeated rows kept once"), steps


def index_images(images_dir, dataset_dir):
    """{isic_id: path} of the image files under images_dir, in one walk (of several files for one id the
    first wins), the ids of symlinks pointing outside images_dir (refused), and the number of extra files."""
    root, out = os.path.realpath(images_dir), re.escape(os.path.realpath(dataset_dir)) + r"(\.(tmp|old)-\d+)?"
    found, refused, extra = {}, [], 0
    for dirpath, dirnames, filenames in os.walk(images_dir):
        dirnames[:] = sorted(d for d in dirnames if not re.fullmatch(out, os.path.realpath(os.path.join(dirpath, d))))
        for name in sorted(filenames):
            stem, path = os.path.splitext(name)[0], os.path.join(dirpath, name)
            if not re.fullmatch(_ISIC_ID, stem) or not model.is_image_file(name):
                continue
            if os.path.islink(path) and os.path.commonpath([root, os.path.realpath(path)]) != root:
                refused.append(stem)
            elif stem in found:
                extra += 1
            else:
                found[stem] = path
    return found, refused, extra


def process_image(job):
    """Worker: hash, decode and shrink one image into out_dir. Returns a small record; never raises."""
    isic_id, src, out_dir, resize_to = job
    try:
        with open(src, "rb") as f:
            sha256 = hashlib.file_digest(f, "sha256").hexdigest()
        with Image.open(src) as img:
            width, height = img.size
        img = model.load_image(src, min_side=resize_to)  # upright RGB; raises on anything unreadable
        if resize_to is None:
            name = isic_id + os.path.splitext(src)[1].lower()
            shutil.copyfile(src, os.path.join(out_dir, name))
        else:
            scale, name = resize_to / min(img.size), isic_id + ".jpg"
            if scale < 1:
                size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
                img = img.resize(size, Image.LANCZOS, reducing_gap=3.0)
            img.save(os.path.join(out_dir, name), quality=95)
        return dict(isic_id=isic_id, sha256=sha256, width=width, height=height, file=name, error="")
    except Exception as e:  # truncated, empty, not an image, decompression bomb...: counted, never fatal
        return dict(isic_id=isic_id, error=type(e).__name__)


def pool_or_none(workers):
    """A process pool whose workers ignore Ctrl-C (the main process handles it, once), or None for 1 worker.
    Ctrl-C is held back while the workers are forked: arriving inside a fork hook it would be lost."""
    if workers == 1:
        return nullcontext()
    hold = getattr(signal, "pthread_sigmask", lambda how, signals: None)  # POSIX only; Windows does not fork
    hold(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        return Pool(workers, signal.signal, (signal.SIGINT, signal.SIG_IGN))
    finally:
        hold(signal.SIG_UNBLOCK, {signal.SIGINT})


def decode_balanced(cands, n_per_class, seed, out_dir, resize_to, workers):
    """Decode the candidates in a SEED-shuffled order per class, in rounds, until n_per_class readable and
    distinct (sha256 of the file) images per class. Returns (chosen rows, unreadable, duplicates)."""
    rng = np.random.default_rng(seed)
    queue = {c: list(rng.permutation(cands.index[cands.label == c])) for c in model.CLASSES}
    chosen, seen, unreadable, duplicates = [], set(), [], []
    tried, usable = dict.fromkeys(model.CLASSES, 0), dict.fromkeys(model.CLASSES, 0)
    with pool_or_none(workers) as pool, tqdm(total=0, desc="decoding", unit="img", disable=cands.empty) as bar:
        while True:  # a round: the next candidates of each class, as many as it still lacks
            batch = [i for c in model.CLASSES for i in queue[c][tried[c]:tried[c] + n_per_class - usable[c]]]
            if not batch:
                break
            for c in model.CLASSES:
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
    """A group per row: connected components (union-find) of rows sharing a lesion_id or a patient_id, so
    no lesion and no patient spans two splits; a row with neither is a group of its own."""
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
    """'train', 'val' or 'test' per row: StratifiedGroupKFold cuts the groups into (up to) 20 folds of about
    the same class balance; the first folds are test, the next val, the rest train."""
    n_folds = min(20, len(set(groups)), max(pd.Series(labels).value_counts()))  # as StratifiedGroupKFold needs
    n_test, n_val = (max(1, round(f * n_folds)) if f else 0 for f in (test_fraction, val_fraction))
    if n_test + n_val == 0:
        return np.full(len(labels), "train")
    if n_test + n_val >= n_folds:
        model.die(f"only {len(set(groups))} lesion/patient groups, too few for val and test splits; "
                  "add images, or set --val-fraction and --test-fraction to 0")
    fold = np.zeros(len(labels), int)
    with warnings.catch_warnings():  # "the least populated class has only n members": expected, harmless
        warnings.simplefilter("ignore", UserWarning)
        cv = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        for k, (_, idx) in enumerate(cv.split(labels, labels, groups)):
            fold[idx] = k
    return np.where(fold < n_test, "test", np.where(fold < n_test + n_val, "val", "train"))


def build(args, tmp):
    """Write the dataset into tmp. Returns (manifest, summary steps)."""
    paths = metadata_paths(args.metadata_csv, args.images_dir)
    if not paths or not os.path.isdir(args.images_dir):
        missing = args.images_dir if paths else f"{args.metadata_csv} (nor a metadata.csv under {args.images_dir})"
        model.die(f"{missing} not found; " + download_hint(args.image_types, args.images_dir))
    df, steps = filter_rows(read_metadata(paths), args.image_types)
    for col in ("lesion_id", "patient_id"):
        if col not in df:
            print(f"no {col} column: images are grouped without it")
            df[col] = ""
    found, refused, extra = index_images(args.images_dir, args.dataset_dir)
    ok = df.isic_id.isin(found.keys())
    missing = df.isic_id[~ok & ~df.isic_id.isin(refused)]
    why = [(len(missing), f"missing {len(missing)}: " + ", ".join(missing[:5]) + ", ..." * (len(missing) > 5)),
           (len(refused), f"refused {len(refused)} symlinks pointing out of {args.images_dir}"),
           (extra, f"{extra} more files for an isic_id ignored")]
    steps.append(("with an image file", int(ok.sum()), "; ".join(text for n, text in why if n)))
    cands = df[ok].reset_index(drop=True)[["isic_id", "label", "lesion_id", "patient_id"]]
    cands["path"] = cands.isic_id.map(found)
    os.makedirs(tmp)
    chosen, unreadable, dups = decode_balanced(cands, args.n_per_class, args.seed, tmp, args.resize_to, args.workers)
    steps += [("decoded (sampled in SEED order)", len(chosen) + len(unreadable) + len(dups), ""),
              ("readable", len(chosen) + len(dups),
               f"unreadable {len(unreadable)}: " + ", ".join(unreadable[:5]) if unreadable else ""),
              ("distinct images", len(chosen),
               f"{len(dups)} duplicate images kept once: " + ", ".join(dups[:5]) if dups else "")]
    if chosen.empty:
        print_steps(steps)
        model.die("no usable image (see above); " + download_hint(args.image_types, args.images_dir))
    for c in model.CLASSES:
        if (chosen.label == c).sum() < args.n_per_class:
            model.warn(f"only {(chosen.label == c).sum()} usable {c} images, fewer than N_PER_CLASS: using them all")
    chosen["split"] = split_groups(chosen.label.to_numpy(), group_ids(chosen).to_numpy(),
                                   args.val_fraction, args.test_fraction, args.seed)
    for split in chosen.split.unique():
        for c in model.CLASSES:
            os.makedirs(os.path.join(tmp, split, c))
    for row in chosen.itertuples():
        os.rename(os.path.join(tmp, row.file), os.path.join(tmp, row.split, row.label, row.file))
    chosen["file"] = chosen.split + "/" + chosen.label + "/" + chosen.file
    manifest = chosen.rename(columns={"path": "source_file"}).sort_values(
        ["split", "label", "isic_id"], key=lambda s: s.map(_SPLITS.index) if s.name == "split" else s)
    manifest = manifest[["isic_id", "split", "label", "lesion_id", "patient_id", "source_file", "sha256", "width",
                         "height", "file"]]
    manifest.to_csv(os.path.join(tmp, "manifest.csv"), index=False)
    return manifest, steps


def clean_leftovers(dataset_dir):
    """Remove the dataset.tmp-* folders of killed runs; put a dataset.old-* back if a swap was cut short."""
    for path in sorted(glob.glob(glob.escape(dataset_dir) + ".old-*")):
        if os.path.exists(dataset_dir):
            shutil.rmtree(path)
        else:
            os.rename(path, dataset_dir)
            print(f"restored {dataset_dir} from {path}, left by a run killed while swapping")
    for path in glob.glob(glob.escape(dataset_dir) + ".tmp-*"):
        shutil.rmtree(path)


def swap_in(tmp, dataset_dir):
    old = f"{dataset_dir}.old-{os.getpid()}"
    if os.path.exists(dataset_dir):
        os.rename(dataset_dir, old)
    os.rename(tmp, dataset_dir)
    shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------- the synthetic demo export
_SKIN = np.array([[238, 204, 180], [230, 190, 160], [218, 172, 140]])  # light skin tones
_PALETTE = np.array([[92, 55, 34], [36, 28, 28], [104, 112, 134], [172, 84, 78], [150, 102, 66]])
_PALETTE_BIAS = np.array([0.2, 0.5, 0.3, 0.0, -0.4])[:, None, None]  # dark brown, black, blue-grey, red, tan
_SITES = ["anterior torso", "posterior torso", "upper extremity", "lower extremity", "head/neck"]


def smooth_noise(rng, shape, cells):
    """Gaussian noise on a cells x cells grid, smoothly (bicubic) enlarged to shape (h, w)."""
    small = Image.fromarray(rng.standard_normal((cells, cells)).astype(np.float32))
    return np.asarray(small.resize(shape[::-1], Image.BICUBIC))


def demo_lesion(rng, malignant, px):
    """RGBA patch (px x px) of one lesion. Benign: round, symmetric, one brown. Malignant: irregular,
    asymmetric border, patches of dark brown, black, blue-grey and red."""
    y, x = np.mgrid[-1:1:px * 1j, -1:1:px * 1j]
    k, angles = np.arange(1, 13)[:, None], np.linspace(-np.pi, np.pi, 721)  # border: a radius per angle
    amp = rng.uniform(0.04, 0.12, k.shape) / np.sqrt(k) if malignant else np.where(k == 2, rng.uniform(0, .08), 0)
    border = 0.6 * (1 + (amp * np.cos(k * angles + rng.uniform(0, 2 * np.pi, k.shape))).sum(0))
    alpha = np.clip((np.interp(np.arctan2(y, x), angles, border) - np.hypot(x, y)) * px / 4, 0, 1)
    if malignant:
        colour = _PALETTE[np.argmax([smooth_noise(rng, (px, px), 5) for _ in _PALETTE] + _PALETTE_BIAS, axis=0)]
    else:
        brown = np.array([176, 126, 88]) + rng.uniform(0, 1) * np.array([-50, -42, -32])
        colour = brown * (1 + 0.03 * smooth_noise(rng, (px, px), 4))[..., None]
    patch = Image.fromarray(np.dstack([colour, alpha * 255]).clip(0, 255).astype(np.uint8), "RGBA")
    return patch.filter(ImageFilter.GaussianBlur(px / (50 if malignant else 80)))


def demo_photo(job):
    """Worker: a clinical overview photo (4:3, longer side size px) of one lesion in one view (rotation,
    position, lighting, hairs), drawn at up to 400 x 300 and enlarged. The same seeds give the same bytes."""
    path, lesion_seed, view_seed, malignant, size = job
    rng, lesion_rng = np.random.default_rng(view_seed), np.random.default_rng(lesion_seed)
    w = min(size, 400)
    h = w * 3 // 4
    diameter = h * (lesion_rng.uniform(0.5, 0.8) if malignant else lesion_rng.uniform(0.25, 0.5))
    patch = demo_lesion(lesion_rng, malignant, int(diameter / 0.6 * rng.uniform(0.9, 1.1)))
    patch = patch.rotate(rng.uniform(0, 360), Image.BILINEAR)
    skin = _SKIN[lesion_rng.integers(len(_SKIN))] * rng.uniform(0.95, 1.05, 3)
    canvas = Image.new("RGB", (w, h), tuple(int(v) for v in skin.clip(0, 255)))
    canvas.paste(patch, tuple((np.array([w, h]) * rng.uniform(0.42, 0.58, 2) - patch.width / 2).astype(int)), patch)
    y, x = np.mgrid[-0.5:0.5:h * 1j, -0.5:0.5:w * 1j]
    a = rng.uniform(0, 2 * np.pi)
    light = 1 + rng.uniform(0.1, 0.3) * (x * np.cos(a) + y * np.sin(a)) + 0.03 * smooth_noise(rng, (h, w), 10)
    light += 0.02 * rng.standard_normal((h, w))  # lighting gradient, blotches, grain; then a colour cast:
    pixels = np.asarray(canvas) * light[..., None] * rng.uniform(0.96, 1.04, 3)
    img = Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).resize((size, size * 3 // 4), Image.BILINEAR)
    draw = ImageDraw.Draw(img)
    for _ in range(rng.integers(0, 5)):  # hairs: gently curved dark lines
        t, (x0, y0), a = np.linspace(0, 1, 8), rng.uniform(0, size, 2), rng.uniform(0, np.pi)
        along, across = t * size * rng.uniform(0.1, 0.4), rng.uniform(-.02, .02) * size * np.sin(np.pi * t)
        xs, ys = x0 + along * np.cos(a) - across * np.sin(a), y0 + along * np.sin(a) + across * np.cos(a)
        draw.line(list(zip(xs, ys)), fill=(45, 35, 30), width=max(1, size // 600), joint="curve")
    img.save(path, quality=90)


def write_demo_export(out_dir, seed=SEED, photo_size=DEMO_PHOTO_SIZE, workers=WORKERS):
    """A synthetic export as 'isic image download' writes it: out_dir/metadata.csv (current schema) and
    out_dir/<isic_id>.jpg; 1-3 views per lesion, 1-3 lesions per patient, rows to be left out (Indeterminate,
    empty diagnosis, dermoscopic, close-up), 2 byte-identical files under other ids; plus 6 photos not in the
    export, out_dir/unseen/<class>_<n>.jpg. The same seed writes the same bytes."""
    rng, lesions = np.random.default_rng(seed), []  # (looks malignant, diagnosis_1, image_type, views)
    for malignant, diagnosis in enumerate(["Benign", "Malignant"]):
        while sum(v for _, d, _, v in lesions if d == diagnosis) < 216:
            lesions.append((bool(malignant), diagnosis, "clinical: overview", rng.choice([1, 2, 3], p=[.4, .35, .25])))
    for diagnosis, image_type, n in [("Benign", "dermoscopic", 12), ("Malignant", "dermoscopic", 12),
                                     ("Benign", "clinical: close-up", 10), ("Malignant", "clinical: close-up", 10),
                                     ("Indeterminate", "clinical: overview", 16), ("", "clinical: overview", 12)]:
        looks = [diagnosis == "Malignant" or diagnosis != "Benign" and rng.random() < 0.5 for _ in range(n)]
        lesions += [(m, diagnosis, image_type, 1) for m in looks]
    rows, jobs, patient, left = [], [], -1, 0
    for lesion, i in enumerate(rng.permutation(len(lesions))):
        malignant, diagnosis, image_type, views = lesions[i]
        if left == 0:  # a new patient, with 1 to 3 lesions
            patient, left = patient + 1, rng.choice([1, 2, 3], p=[.7, .2, .1])
            person = dict(age_approx=5 * rng.integers(4, 17), sex=rng.choice(["female", "male"]))
        left -= 1
        lesion_meta = dict(person, anatom_site_1=rng.choice(_SITES), diagnosis_1=diagnosis, image_type=image_type,
                           diagnosis_2=diagnosis and f"{diagnosis} melanocytic proliferations",
                           lesion_id=f"IL_{9000000 + lesion}", patient_id=f"IP_{9000000 + patient}")
        for _ in range(views):
            rows.append(lesion_meta)
            jobs.append(((seed, 1, lesion), (seed, 2, len(jobs)), malignant))
    copies = [int(i) for i in rng.choice(len(rows), 2, replace=False)]  # the same file again, under another id
    ids = [f"ISIC_{9000000 + n}" for n in rng.permutation(len(rows) + len(copies))]
    meta = pd.DataFrame(rows + [rows[i] for i in copies]).assign(
        isic_id=ids, attribution="SYNTHETIC demo image, not a real patient", copyright_license="CC-0",
        pixels_x=photo_size, pixels_y=photo_size * 3 // 4)
    first = ["isic_id", "attribution", "copyright_license"]  # then the other fields, sorted, as in real exports
    os.makedirs(os.path.join(out_dir, "unseen"), exist_ok=True)
    meta[first + sorted(set(meta) - set(first))].sort_values("isic_id").to_csv(
        os.path.join(out_dir, "metadata.csv"), index=False)
    work = [(os.path.join(out_dir, ids[n] + ".jpg"), *job, photo_size) for n, job in enumerate(jobs)]
    work += [(os.path.join(out_dir, "unseen", f"{c}_{k + 1}.jpg"), (seed, 3, m, k), (seed, 4, m, k), bool(m),
              photo_size) for m, c in enumerate(model.CLASSES) for k in range(3)]
    with pool_or_none(workers) as pool:
        for _ in tqdm(pool.imap_unordered(demo_photo, work, 4) if pool else map(demo_photo, work),
                      total=len(work), desc="demo photos"):
            pass
    for n, i in enumerate(copies):
        shutil.copyfile(os.path.join(out_dir, ids[i] + ".jpg"), os.path.join(out_dir, ids[len(jobs) + n] + ".jpg"))
    print(f"wrote a synthetic ISIC export to {out_dir}/: {len(meta)} rows in metadata.csv, 6 photos in unseen/")


def print_steps(steps):
    print("\nsummary")
    for step, n, why in steps:
        print(f"  {step:<44}{n:>7}  {why}")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    args = model.add_constant_flags(parser, globals()).parse_args(argv)
    if bad := [t for t in args.image_types if t not in _ISIC_IMAGE_TYPES]:
        model.die(f"unknown image type {bad[0]!r}; ISIC image types: " + ", ".join(map(repr, _ISIC_IMAGE_TYPES)))
    if not (args.val_fraction >= 0 and args.test_fraction >= 0 and args.val_fraction + args.test_fraction < 1):
        model.die("--val-fraction and --test-fraction must be >= 0, with a sum below 1 (e.g. 0.15 and 0.15)")
    sizes = [args.n_per_class, args.workers] + [args.resize_to] * (args.resize_to is not None)
    if min(sizes) < 1 or args.demo_photo_size < 64:
        model.die("--n-per-class, --workers and --resize-to must be >= 1 (--resize-to none: copy the files), "
                  "--demo-photo-size >= 64")
    args.dataset_dir = os.path.normpath(args.dataset_dir)
    return args


def main(argv=None):
    args, start = parse_args(argv), time.time()
    tmp = f"{args.dataset_dir}.tmp-{os.getpid()}"
    try:
        clean_leftovers(args.dataset_dir)
        if args.demo:
            write_demo_export(args.demo_dir, args.seed, args.demo_photo_size, args.workers)
            args.metadata_csv, args.images_dir = os.path.join(args.demo_dir, "metadata.csv"), args.demo_dir
        manifest, steps = build(args, tmp)
        swap_in(tmp, args.dataset_dir)
    except KeyboardInterrupt:
        print("\ninterrupted; the previous dataset is untouched", file=sys.stderr)
        sys.exit(130)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print_steps(steps)
    table = pd.crosstab(manifest.split, manifest.label, margins=True, margins_name="total")
    print(table.reindex([s for s in _SPLITS if s in table.index] + ["total"]).to_string())
    print(f"wrote {len(manifest)} images to {args.dataset_dir}/ and {args.dataset_dir}/manifest.csv "
          f"in {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
