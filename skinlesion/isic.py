"""Reading an ISIC Archive export, as 'isic image download' leaves it: metadata.csv (read also when Excel has
re-saved it), <isic_id>.<ext> photos, attribution.txt and licenses/. Its vocabularies (image types, the
benign/malignant side of a row from diagnosis_1 or the legacy benign_malignant), and the columns that say whom and
what the photos show (the factors of a model card: image type, licence, how the diagnosis was confirmed, skin type,
sex, age band, body site). Every column but isic_id is optional in an export: a missing one reads as unknown.
Then the balanced sample of its photos, decoded (each class's candidates in a seeded order, in rounds, until it has
its number of readable, distinct photos, each shrunk once by worker processes: clinical photos are often 3000+ px
wide), and the train, validation and test splits that keep lesions and patients apart (photos of one lesion, or of
one patient, always land in the same split, so validation and test scores are not inflated by near-copies)."""

import glob
import hashlib
import io
import os
import shutil
import warnings

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from skinlesion import files, interrupts, messages, photos, reading
from skinlesion.files import atomic_write, file_kind, write_text
from skinlesion.folders import is_within
from skinlesion.messages import UserError, first_few, printable, warn
from skinlesion.schema import as_text

SEPARATORS = {",": "commas", ";": "semicolons", "\t": "tabs"}
IMAGE_TYPES = ["dermoscopic", "clinical: overview", "clinical: close-up", "TBP tile: close-up", "TBP tile: overview",
               "RCM: macroscopic", "RCM: tile", "RCM: mosaic", "clinical", "overview"]  # fmt: skip
LEGACY_TYPES = {"clinical: overview": "overview", "clinical: close-up": "clinical"}  # names before July 2023
SIDE_COLUMNS = ["diagnosis_1", "benign_malignant"]  # the current and the legacy benign/malignant label
UNDECIDED = ["indeterminate", "indeterminate/benign", "indeterminate/malignant", "empty"]  # ISIC's 'not decided'
CARD_COLUMNS = ["image_type", "attribution", "copyright_license", "diagnosis_confirm_type", "fitzpatrick_skin_type",
                "sex", "age_approx", "anatom_site_1", "anatom_site_general", "dermoscopic_type"]  # fmt: skip
FACTORS = {"image type": "image_type", "licence": "copyright_license", "confirmation": "diagnosis_confirm_type",
           "skin type": "fitzpatrick_skin_type", "sex": "sex", "age band": "age_approx",
           "body site": "anatom_site_1"}  # fmt: skip
SUBGROUPS = ["sex", "age band", "body site", "skin type"]  # the factors evaluate.py reports metrics for
AGE_BANDS = [(0, 30, "0-29"), (30, 50, "30-49"), (50, 70, "50-69"), (70, 200, "70+")]
ISIC_ID = r"ISIC_\d{7}"
MAX_TABLE_BYTES = 1_000_000_000  # the largest metadata.csv read (the whole ISIC Archive's is about 0.3 GB)


def read_table(path, columns, what):
    """The named columns of a CSV file, as strings. What Excel saves is read too, with a warning: UTF-16 ('Unicode
    Text'), Windows-1252, fields separated by semicolons or tabs (told from the header line). Anything else that
    is not CSV text (binary data, a folder, a named pipe: never opened; over MAX_TABLE_BYTES) dies with one line,
    and so does a named column that is there twice with other values (one of them was ignored silently)."""
    kind = file_kind(path)
    if kind:
        raise UserError(f"{printable(path)} is {kind}, not a CSV file; it must be {what}")
    try:
        data = reading.read_bytes(path, MAX_TABLE_BYTES)
    except reading.Unreadable as e:  # it changed since, or is too large
        raise UserError(f"{e}; it must be {what}") from None
    except OSError as e:
        raise UserError(f"cannot read {printable(path)} ({e.strerror or e}); it must be {what}") from None
    utf16 = data.startswith((b"\xff\xfe", b"\xfe\xff"))
    if b"\0" in data and not utf16:  # an image, an archive
        raise UserError(f"{printable(path)} holds binary data, not CSV text; it must be {what}")
    header = data[: 1 << 16].decode("utf-16" if utf16 else "utf-8", "replace").split("\n")[0]
    sep = max(SEPARATORS, key=header.count)
    if utf16 or sep != ",":
        encoding_word = "UTF-16 " if utf16 else ""
        warn(f"{printable(path)} is {encoding_word}text with {SEPARATORS[sep]} between fields (as Excel saves it); "
             "read it so")  # fmt: skip

    def read(encoding):
        names = pd.read_csv(io.BytesIO(data), sep=sep, header=None, nrows=1, dtype=str, encoding=encoding)
        names = [name.removeprefix("\ufeff") for name in names.iloc[0].fillna("")]
        twins = {c: [f"{c}.{k}" for k in range(1, names.count(c))] for c in columns if names.count(c) > 1}
        wanted = set(columns).union(*twins.values())
        table = pd.read_csv(io.BytesIO(data), sep=sep, usecols=lambda c: c in wanted, dtype=str,
                            keep_default_na=False, encoding=encoding)  # fmt: skip
        return without_twins(table, twins, path)

    try:
        try:
            return read("utf-16" if utf16 else "utf-8-sig")
        except UnicodeDecodeError:  # e.g. "Müller" in cp1252
            warn(f"{printable(path)} is not UTF-8; read it as Windows-1252 (cp1252), as Excel saves CSV")
            return read("cp1252")
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {printable(path)} as CSV ({type(e).__name__}); it must be {what}") from None


def without_twins(table, twins, path):
    """table without the second (third...) copies of its columns (pandas names them diagnosis_1.1, ...): copies
    that hold the same values go with a warning; copies that disagree on a row fail with one line naming them."""
    for column, copies in twins.items():
        for copy in copies:
            differ = table[column].str.strip() != table[copy].str.strip()
            if differ.any():
                rows = table.isic_id[differ] if "isic_id" in table else (differ[differ].index + 2).astype(str)
                raise UserError(
                    f"{printable(path)} has {len(copies) + 1} {printable(column)} columns, which disagree on "
                    f"{differ.sum()} row(s) ({first_few(rows)}); keep the one that is right and remove the others"
                )
        warn(f"{printable(path)} has {len(copies) + 1} {printable(column)} columns, with the same values: read once")
    return table.drop(columns=[copy for copies in twins.values() for copy in copies])


def metadata_files(metadata_csv, images_dir):
    """The metadata.csv files of an export: metadata_csv, or if it is absent every one under images_dir (one per
    'isic image download'), found through links that stay inside images_dir, each real folder once."""
    from skinlesion.photos import walk_once

    if file_kind(metadata_csv) != "missing":
        return [metadata_csv]
    if not os.path.isdir(images_dir):
        return []
    return [path for path in walk_once(images_dir)[0] if os.path.basename(path) == "metadata.csv"]


def read_metadata(paths, columns):
    """The named columns of the metadata files, concatenated, as stripped strings."""
    frames = [read_table(path, columns, "an ISIC export's metadata.csv") for path in paths]
    for path, df in zip(paths, frames):
        if "isic_id" not in df:
            raise UserError(
                f"{printable(path)} has no isic_id column; use the metadata.csv that 'isic image download' writes"
            )
    return pd.concat(frames, ignore_index=True).fillna("").apply(lambda s: s.str.strip())


def side_of(values):
    """Per value 'benign' or 'malignant' (any case, spaces around ignored), '' where empty, else the value in
    quotes ('Indeterminate', ...): never guessed."""
    lower = values.str.strip().str.lower()
    quoted = "'" + values.str.strip() + "'"
    return quoted.where(~lower.isin(["benign", "malignant"]), lower).where(lower != "", "")


def sides(df):
    """Per row its side: 'benign' or 'malignant' from diagnosis_1 (else the legacy benign_malignant), else why not:
    the value in quotes, 'empty', or 'conflicting' (the two columns disagree)."""
    if not set(SIDE_COLUMNS) & set(df):
        raise UserError(
            "the metadata has neither diagnosis_1 nor benign_malignant, so no labels; download the export "
            "again with 'isic image download' (its metadata.csv has diagnosis_1)"
        )
    empty = pd.Series("", index=df.index)
    new, old = (side_of(df[c]) if c in df else empty for c in SIDE_COLUMNS)
    side = new.where(new != "", old).replace("", "empty")
    disagree = (new != "") & (old != "") & (new.str.lower() != old.str.lower())
    return side.mask(disagree, "conflicting")


def is_undecided(side):
    """Per row: a side that is one of ISIC's words for 'not decided' (expected losses, not errors)."""
    return side.str.strip("'").str.lower().isin(UNDECIDED)


def image_files(ids, images_dir, skip):
    """({isic_id: path} of the regular image files under images_dir (one walk), the ids without one [(cause, rows,
    examples)], the byte-identical copies left out). Refused: links out of images_dir, named pipes and such; an id
    with two different photos (a .jpg and a .png, one in a sub-folder): which shows the row's lesion cannot be
    told, so neither is used. Of byte-identical copies the first found is used (a folder's files before its
    sub-folders'). Not entered: the folders for which skip(real path) is true (the dataset being written)."""
    from skinlesion.photos import is_image_file

    wanted, candidates, refused = set(ids), {}, {}
    for dirpath, dirnames, filenames in os.walk(images_dir):
        dirnames[:] = sorted(d for d in dirnames if not skip(os.path.realpath(os.path.join(dirpath, d))))
        for name in sorted(filenames):
            stem, path = os.path.splitext(name)[0], os.path.join(dirpath, name)
            if stem not in wanted or not is_image_file(name):
                continue
            if os.path.islink(path) and not is_within(path, images_dir):
                refused.setdefault(stem, (f"symlink out of {printable(images_dir)}", stem))
            elif file_kind(path):
                refused.setdefault(stem, ("not a regular file", f"{stem} ({file_kind(path)})"))
            else:
                candidates.setdefault(stem, []).append(path)
    found, copies = {}, 0
    for stem, paths in candidates.items():
        refused.pop(stem, None)
        if len(paths) > 1 and len({files.file_sha256(path) for path in paths}) > 1:
            shown = ", ".join(printable(os.path.relpath(path, images_dir)) for path in paths[:3])
            refused[stem] = ("different photos under one isic_id", f"{stem} ({shown})")
        else:
            found[stem], copies = paths[0], copies + len(paths) - 1
    missing = {}
    for i in ids:
        if i not in found:
            cause, example = refused.get(i, ("missing", i))
            missing.setdefault(cause, []).append(example)
    return found, [(cause, len(items), first_few(items)) for cause, items in missing.items()], copies


def credit_refusal(path, folder):
    """Why a credit file of an export is not copied (a link out of its folder, not a regular file), or None."""
    if not is_within(path, folder):
        return f"a link out of {printable(folder)}"
    return file_kind(path)


def copy_credits(metadata_paths, rows, out_dir):
    """Copy the export's attribution.txt (all of them, merged) and licenses/ into out_dir: they travel with the
    photos. Where the export has no attribution.txt, one is written from the metadata's attribution column. A
    file that is a link out of its export folder (that of its metadata.csv), or not a regular file, is refused
    and named, as photos are. Returns what was done, in words."""
    folders = sorted({os.path.dirname(os.path.abspath(p)) for p in metadata_paths})
    texts, licences, refused = [], {}, []

    for folder in folders:
        attribution = os.path.join(folder, "attribution.txt")
        found = [attribution] if os.path.lexists(attribution) else []
        for path in found + sorted(glob.glob(os.path.join(glob.escape(folder), "licenses", "*.txt"))):
            why = credit_refusal(path, folder)
            if why:
                refused.append(f"{printable(path)} ({why})")
            elif path == attribution:
                text = reading.read_bytes(attribution, MAX_TABLE_BYTES).decode("utf-8", "replace")
                texts += [t.strip() for t in text.split("\n\n") if t.strip() and t.strip() not in texts]
            else:
                licences.setdefault(os.path.basename(path), path)
    said = f"attribution.txt ({len(texts)} attributions) and licenses/ ({', '.join(licences) or 'none'}) copied"
    if not texts:
        column = rows["attribution"] if "attribution" in rows else pd.Series("", index=rows.index)
        texts = list(column.replace("", "unknown (no attribution in the export)").value_counts().index)
        said = f"no attribution.txt in the export: written from its attribution column ({len(texts)} attributions)"
    if refused:
        warn(f"refused {len(refused)} credit file(s) of the export: {first_few(refused)}; copy them into it")
    write_text(os.path.join(out_dir, "attribution.txt"), "\n\n".join(texts) + "\n", None)  # a failure names the file
    os.makedirs(os.path.join(out_dir, "licenses"))
    for name, path in licences.items():
        atomic_write(os.path.join(out_dir, "licenses", name), lambda tmp, source=path: copy_regular(source, tmp), None)
    return said


def copy_regular(source, target):
    """Copy a regular file (reading.open_regular: a named pipe put in its place is never waited on)."""
    with reading.open_regular(source) as f, open(target, "wb") as out:
        shutil.copyfileobj(f, out)


def age_band(value):
    """'30-49' for an age_approx of 35; '' where unknown."""
    try:
        age = float(value)
    except (TypeError, ValueError):
        return ""
    return next((band for low, high, band in AGE_BANDS if low <= age < high), "")


def factor_values(rows):
    """{factor: its value per row ('' where unknown)} of metadata rows (a DataFrame of strings); the body site
    from anatom_site_1, or from anatom_site_general in exports before 2026-05."""
    values = {}
    for factor, column in FACTORS.items():
        if column == "anatom_site_1" and not rows.get(column, pd.Series(dtype=str)).astype(bool).any():
            column = "anatom_site_general"
        column_values = rows[column] if column in rows else pd.Series("", index=rows.index)
        if factor == "age band":
            column_values = column_values.map(age_band)
        values[factor] = column_values.fillna("").astype(str).str.strip().map(as_text)  # printable, bounded
    return values


def factor_counts(rows, by):
    """{factor: {group: {value: photos}}} with 'unknown' for empty values, grouped by the column by (split)."""
    counts = {}
    for factor, values in factor_values(rows).items():
        table = pd.crosstab(values.replace("", "unknown"), rows[by])
        counts[factor] = {
            as_text(g) or "unknown": {str(v): int(n) for v, n in table[g].items() if n} for g in table.columns
        }
    return counts


def process_image(job):
    """Worker: hash, decode and shrink one image into out_dir; error: why it is unusable; OSError: out_dir unwritable"""
    isic_id, src, out_dir, resize_to = job
    if files.file_kind(src):  # turned into a named pipe since the index: opening it would block forever
        return dict(isic_id=isic_id, error="not a regular file")
    try:
        with photos.photo_file(src) as f:  # read once: what is hashed and decoded is what is copied
            data = f.read()
        sha256 = hashlib.sha256(data).hexdigest()
        width, height = photos.image_size(io.BytesIO(data))
        img = photos.load_image(io.BytesIO(data), min_side=resize_to)  # upright RGB; raises on anything unreadable
    except photos.NotAPhoto:  # counted under one cause, whatever its size
        return dict(isic_id=isic_id, error=f"one side over {photos.MAX_ASPECT} times the other")
    except Exception as e:  # truncated, empty, not an image, decompression bomb...: counted, never fatal
        return dict(isic_id=isic_id, error=type(e).__name__)
    name = isic_id + (".jpg" if resize_to else os.path.splitext(src)[1].lower())
    out = os.path.join(out_dir, name)
    try:
        if resize_to is None:
            with open(out, "wb") as f:
                f.write(data)
        else:
            scale = resize_to / min(img.size)
            if scale < 1:
                size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
                img = img.resize(size, Image.LANCZOS, reducing_gap=3.0)
            img.save(out, quality=95)
    except OSError as e:  # a full disk, a quota: the dataset's fault, not the image's
        raise OSError(
            f"could not write {messages.printable(out)} ({e.strerror or e}); free some disk space or pass another "
            "--dataset-dir"
        ) from None
    return dict(isic_id=isic_id, sha256=sha256, width=width, height=height, file=name, error="")


def decode_balanced(cands, n_per_class, seed, out_dir, resize_to, workers):
    """Decode the candidates in a SEED-shuffled order per class, in rounds, until n_per_class readable and
    distinct (sha256 of the file) images per class. Returns (chosen rows, unreadable, duplicates)."""
    rng, classes = np.random.default_rng(seed), sorted(cands.label.unique())
    queue = {c: list(rng.permutation(cands.index[cands.label == c])) for c in classes}
    chosen, seen, unreadable, duplicates = [], set(), [], []
    tried, usable = dict.fromkeys(classes, 0), dict.fromkeys(classes, 0)
    goal = sum(min(n_per_class, len(queue[c])) for c in classes)  # the bar's total: photos wanted, known at once
    bar = tqdm(total=goal, desc="decoding", unit="img", disable=cands.empty)
    with interrupts.worker_pool(workers) as pool, bar:
        while True:  # a round: the next candidates of each class, as many as it still lacks
            batch = [i for c in classes for i in queue[c][tried[c] : tried[c] + n_per_class - usable[c]]]
            if not batch:
                break
            for c in classes:
                tried[c] += n_per_class - usable[c]
            jobs = [(cands.isic_id[i], cands.path[i], out_dir, resize_to) for i in batch]
            chunk = max(1, min(16, len(jobs) // (4 * workers)))
            records = pool.imap(process_image, jobs, chunk) if pool else map(process_image, jobs)
            for i, rec in zip(batch, records):
                if rec["error"]:
                    unreadable.append(f"{rec['isic_id']} ({rec['error']})")
                elif rec["sha256"] in seen:
                    duplicates.append(rec["isic_id"])
                    os.remove(os.path.join(out_dir, rec["file"]))
                else:
                    seen.add(rec["sha256"])
                    chosen.append(dict(cands.loc[i], **rec))
                    usable[cands.label[i]] += 1
                    bar.update()
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
        keys = []
        if lesion:
            keys.append(f"lesion {lesion}")
        if patient:
            keys.append(f"patient {patient}")
        for key in keys:
            parent[find(key)] = find(isic_id)
    return pd.Series([find(i) for i in df.isic_id], index=df.index)


def split_groups(labels, groups, val_fraction, test_fraction, seed):
    """'train', 'val' or 'test' per row: StratifiedGroupKFold cuts the groups into (up to) 20 folds of about the
    same class balance; the first folds are test, the next val, the rest train. Each split needs every class."""
    from sklearn.model_selection import StratifiedGroupKFold

    n_folds = min(20, len(set(groups)), max(pd.Series(labels).value_counts()))  # as StratifiedGroupKFold needs
    n_test, n_val = (max(1, round(f * n_folds)) if f else 0 for f in (test_fraction, val_fraction))
    if n_test + n_val == 0:
        return np.full(len(labels), "train")
    if n_test + n_val >= n_folds:
        raise UserError(
            f"only {len(set(groups))} lesion/patient groups, too few for val and test splits; add images, or set "
            "--val-fraction and --test-fraction to 0"
        )
    fold = np.zeros(len(labels), int)
    with warnings.catch_warnings():  # "the least populated class has only n members": expected, harmless
        warnings.simplefilter("ignore", UserWarning)
        cv = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        for k, (_, idx) in enumerate(cv.split(labels, labels, groups)):
            fold[idx] = k
    split = np.where(fold < n_test, "test", np.where(fold < n_test + n_val, "val", "train"))
    for s in sorted(set(split)):
        for c in sorted(set(labels)):
            if not (labels[split == s] == c).any():
                raise UserError(
                    f"the {s} split would have no {c} images: the {(labels == c).sum()} {c} images are only "
                    f"{len(set(groups[labels == c]))} groups; add {c} images, or lower --val-fraction/"
                    "--test-fraction"
                )
    return split


def labelled_photos(folder):
    """An export as downloaded, for an external validation: every photo under folder (its metadata.csv, else each
    metadata.csv under it) whose row has a definite benign/malignant side and an image file, whatever its image
    type, at its natural prevalence (no sample). Returns (rows: isic_id, side, path and the card's columns;
    [(why, rows, examples)] of the rows left out), read by the rules prepare_dataset.py reads an export by (the
    side from diagnosis_1 or the legacy benign_malignant, valid ids, no id with two labels, regular image files
    inside the export)."""
    paths = metadata_files(os.path.join(folder, "metadata.csv"), folder)
    if not paths:
        raise UserError(f"no metadata.csv in {printable(folder)}; pass the folder 'isic image download' wrote "
            "(metadata.csv and the photos)")  # fmt: skip
    rows = read_metadata(paths, ["isic_id", *SIDE_COLUMNS, *CARD_COLUMNS])
    rows = rows.assign(side=sides(rows))
    left_out = []

    def keep(ok, why, examples):
        if not ok.all():
            left_out.append((why, int((~ok).sum()), examples))
        return rows[ok]

    ok = rows.side.isin(["benign", "malignant"])
    rows = keep(ok, "no definite benign/malignant side", messages.counts_text(rows.side[~ok], 3))
    ok = rows.isic_id.str.fullmatch(ISIC_ID)
    rows = keep(ok, "invalid isic_id", first_few(rows.isic_id[~ok].map(repr)))
    ok = rows.groupby("isic_id").side.transform("nunique") == 1
    rows = keep(ok, "isic_id listed with different labels", first_few(rows.isic_id[~ok]))
    ok = ~rows.isic_id.duplicated()
    rows = keep(ok, "repeated rows (each photo kept once)", first_few(rows.isic_id[~ok]))
    found, no_file, _ = image_files(rows.isic_id, folder, lambda path: False)
    rows = rows[rows.isic_id.isin(found.keys())]
    return rows.assign(path=rows.isic_id.map(found)).reset_index(drop=True), left_out + no_file
