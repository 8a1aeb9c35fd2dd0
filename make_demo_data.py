"""
Write a synthetic ISIC Archive export to demo_data/: what 'isic image download' would leave there, so the
whole pipeline runs without a download. The photos are drawings, not real lesions: a demo, not data.

    python make_demo_data.py                      # demo_data/: metadata.csv, ISIC_9*.jpg, attribution.txt, ...
    python prepare_dataset.py --metadata-csv demo_data/metadata.csv --images-dir demo_data
    python make_demo_data.py --photo-size 512     # smaller photos, faster

Four lesion types, each with ISIC's diagnosis_1/2/3 and a picture of its own. Benign: nevus (small, round, one
brown) and seborrheic keratosis (larger, grey-tan to grey-brown, rough, a sharp 'stuck-on' border). Malignant:
invasive melanoma (large, irregular, several dark colours) and basal cell carcinoma (a large pink pearly nodule
with fine red vessels, blue-grey nests and a small dark ulcer). 216 clinical overview photos per side (about 60/40
within it, and 6 of a rare dermatofibroma among the benign ones), 1-3 views per lesion and 1-3 lesions per patient,
plus rows prepare_dataset.py must leave out (Indeterminate ones with their diagnosis_2/3, empty diagnosis,
dermoscopic, close-up) and 2 byte-identical files under other ids. metadata.csv has the current schema (isic_id,
attribution, copyright_license first, then the other fields sorted) with what a model card needs: licence,
attribution (SYNTHETIC institutions or Anonymous), sex, age, anatomic site, Fitzpatrick type, how the diagnosis was
confirmed, image_manipulation 'synthetic'; attribution.txt and licenses/<licence>.txt as isic-cli writes them (the
licence texts are short stand-ins). unseen/ holds 12 more photos for predict.py: benign_1..3.jpg nevi,
benign_4..6.jpg seborrheic keratoses, malignant_1..3.jpg melanomas, malignant_4..6.jpg basal cell carcinomas.
The same SEED and PHOTO_SIZE write the same bytes.

OUT_DIR is written only if it is missing, empty or was made by make_demo_data.py (it carries the mark file
.skin-lesion-classifier): the export is built beside it and swapped in, so a failed or interrupted run leaves
the previous one as it was. A real export, or any folder holding other files, is refused.
"""

from skinlesion import interrupts

if __name__ == "__main__":  # first, before the libraries load: a Ctrl-C while they do is one line, not a traceback
    interrupts.one_line_while_loading()

import os
import shutil
import sys
from collections import Counter

import numpy as np
import pandas as pd
from tqdm import tqdm

from skinlesion import demo, flags, folders, messages

# -----------------------------------------------------------------------------
OUT_DIR = "demo_data"  # folder for the export: missing, empty or made by this script (then replaced as a whole)
PHOTO_SIZE = 1600  # longer side of the photos in px, 64 to 10000 (4:3, like clinical overview photos)
SEED = 42  # 0 to 2**32 - 1; the same seed writes the same bytes
WORKERS = os.cpu_count()  # processes that draw photos, 1 to 1024 (1: no pool)
# -----------------------------------------------------------------------------
_SCRIPT = "make_demo_data.py"
_TYPES = {  # the type drawn (skinlesion/demo.py): diagnosis_1, diagnosis_2, diagnosis_3 as in ISIC's schema
    "nevus": ("Benign", "Benign melanocytic proliferations", "Nevus"),
    "seborrheic_keratosis": ("Benign", "Benign epidermal proliferations", "Seborrheic keratosis"),
    "dermatofibroma": ("Benign", "Benign soft tissue proliferations - Fibro-histiocytic", "Dermatofibroma"),
    "melanoma": ("Malignant", "Malignant melanocytic proliferations (Melanoma)", "Melanoma Invasive"),
    "basal_cell_carcinoma": (
        "Malignant",
        "Malignant adnexal epithelial proliferations - Follicular",
        "Basal cell carcinoma",
    ),
    "actinic_keratosis": ("Indeterminate", "Indeterminate epidermal proliferations", "Solar or actinic keratosis"),
    "atypical_melanocytic": (
        "Indeterminate",
        "Indeterminate melanocytic proliferations",
        "Atypical melanocytic neoplasm",
    ),
}
_OVERVIEW = dict(nevus=130, seborrheic_keratosis=80, dermatofibroma=6, melanoma=130, basal_cell_carcinoma=86)
_LEFT_OUT = [  # lesions of one photo each that prepare_dataset.py leaves out: type (None: no diagnosis), image_type, n
    *[(kind, "dermoscopic", n) for kind, n in [("nevus", 7), ("seborrheic_keratosis", 5), ("melanoma", 7)]],
    ("basal_cell_carcinoma", "dermoscopic", 5),
    *[(kind, "clinical: close-up", n) for kind, n in [("nevus", 6), ("seborrheic_keratosis", 4), ("melanoma", 6)]],
    ("basal_cell_carcinoma", "clinical: close-up", 4),
    ("actinic_keratosis", "clinical: overview", 10),
    ("atypical_melanocytic", "clinical: overview", 6),
    (None, "clinical: overview", 12),
]
_UNSEEN = [("benign", "nevus"), ("benign", "seborrheic_keratosis"), ("malignant", "melanoma")]
_UNSEEN += [("malignant", "basal_cell_carcinoma")]  # unseen/<class>_1..3.jpg the first type, _4..6.jpg the second
_ATTRIBUTIONS = [  # per patient: attribution, its licence, share of the patients
    ("SYNTHETIC Demo Skin Clinic (drawings, not real patients)", "CC-BY-NC", 0.35),
    ("SYNTHETIC Example University Hospital (drawings, not real patients)", "CC-BY-NC", 0.25),
    ("SYNTHETIC Sample Skin Cancer Registry (drawings, not real patients)", "CC-BY", 0.2),
    ("Anonymous", "CC-0", 0.2),
]
_LICENSES = {
    "CC-0": "Creative Commons CC0 1.0 Universal, https://creativecommons.org/publicdomain/zero/1.0/",
    "CC-BY": "Creative Commons Attribution 4.0 International, https://creativecommons.org/licenses/by/4.0/",
    "CC-BY-NC": "Creative Commons Attribution-NonCommercial 4.0 International, "
    "https://creativecommons.org/licenses/by-nc/4.0/",
}
_SITES = ["Head and neck", "Trunk", "Upper extremity", "Lower extremity"]  # anatom_site_1, the current vocabulary
_CONFIRM = ["histopathology", "single image expert consensus", "serial imaging showing no change"]
_CONFIRM += ["single contributor clinical assessment"]
_DERMOSCOPIC = ["contact polarized", "contact non-polarized", "non-contact polarized"]
_FITZPATRICK = ["I", "II", "III", "IV", "V", "VI"]


# ---------------------------------------------------------------------------- the metadata
def patient_fields(rng):
    """(the fields all of one patient's rows share, the skin (Fitzpatrick type 0-5) their photos are drawn on).
    The Fitzpatrick type is mostly not recorded, as in the Archive; then the skin is light (I-III)."""
    fitzpatrick = rng.choice(7, p=[0.65, 0.08, 0.12, 0.09, 0.03, 0.02, 0.01])  # 0: not recorded
    attribution, licence, _ = _ATTRIBUTIONS[rng.choice(len(_ATTRIBUTIONS), p=[s for *_, s in _ATTRIBUTIONS])]
    age = 5 * rng.integers(4, 18)
    fields = dict(
        attribution=attribution,
        copyright_license=licence,
        age_approx="" if rng.random() < 0.06 else str(age),
        sex=str(rng.choice(["female", "male", ""], p=[0.48, 0.48, 0.04])),
        fitzpatrick_skin_type=([""] + _FITZPATRICK)[fitzpatrick],
    )
    if fitzpatrick:
        return fields, int(fitzpatrick) - 1
    return fields, int(rng.integers(3))


def lesion_fields(rng, kind, image_type):
    """The fields of one lesion of a type (None: no diagnosis) in one image type."""
    diagnosis = _TYPES[kind] if kind else ("", "", "")
    confirm = "histopathology"
    if diagnosis[0] == "Benign":
        confirm = str(rng.choice(_CONFIRM, p=[0.4, 0.3, 0.2, 0.1]))
    elif not kind:
        confirm = ""
    dermoscopic_type = str(rng.choice(_DERMOSCOPIC)) if image_type == "dermoscopic" else ""
    site_shares = [0.55, 0.25, 0.1, 0.1] if kind == "basal_cell_carcinoma" else [0.15, 0.45, 0.2, 0.2]
    return dict(
        anatom_site_1=str(rng.choice(_SITES, p=site_shares)),
        diagnosis_1=diagnosis[0],
        diagnosis_2=diagnosis[1],
        diagnosis_3=diagnosis[2],
        diagnosis_confirm_type=confirm,
        dermoscopic_type=dermoscopic_type,
        image_type=image_type,
        image_manipulation="synthetic",
    )


def demo_metadata(seed):
    """(metadata rows as a DataFrame, a (lesion seed, view seed, type drawn, skin, image type) job per drawn photo,
    the row numbers whose file is copied under another id) for a synthetic export."""
    rng, lesions = np.random.default_rng(seed), []  # (type or None, type drawn, image_type, views)
    for kind, n in _OVERVIEW.items():
        done = 0
        while done < n:
            views = 1 if kind == "dermatofibroma" else min(n - done, rng.choice([1, 2, 3], p=[0.4, 0.35, 0.25]))
            lesions.append((kind, kind, "clinical: overview", views))
            done += views
    for kind, image_type, n in _LEFT_OUT:
        for _ in range(n):
            drawn = kind
            if kind is None:
                drawn = str(rng.choice(["nevus", "melanoma"]))
            lesions.append((kind, drawn, image_type, 1))
    rows, jobs, patient, left = [], [], -1, 0
    for lesion, i in enumerate(rng.permutation(len(lesions))):
        kind, drawn, image_type, views = lesions[i]
        if left == 0:  # a new patient, with 1 to 3 lesions
            patient, left = patient + 1, rng.choice([1, 2, 3], p=[0.7, 0.2, 0.1])
            person, skin = patient_fields(rng)
        left -= 1
        ids = dict(lesion_id=f"IL_{9000000 + lesion}", patient_id=f"IP_{9000000 + patient}")
        fields = dict(person, **lesion_fields(rng, kind, image_type), **ids)
        for _ in range(views):
            rows.append(fields)
            jobs.append(((seed, 1, lesion), (seed, 2, len(jobs)), drawn, skin, image_type))
    copies = [int(i) for i in rng.choice(len(rows), 2, replace=False)]  # the same file again, under another id
    ids = [f"ISIC_{9000000 + n}" for n in rng.permutation(len(rows) + len(copies))]
    return pd.DataFrame(rows + [rows[i] for i in copies]).assign(isic_id=ids), jobs, copies


def attributions(meta):
    """attribution.txt as isic-cli writes it: the distinct attributions, most images first (then by name),
    Anonymous last, separated by blank lines."""
    ranked = sorted(Counter(meta.attribution).items(), key=lambda item: (item[0] == "Anonymous", -item[1], item[0]))
    return "\n\n".join(name for name, _ in ranked)


def write_demo_export(out_dir, seed=SEED, photo_size=PHOTO_SIZE, workers=WORKERS):
    """The synthetic export, built in a fresh marked folder beside out_dir and swapped in when complete:
    <isic_id>.jpg, unseen/<class>_<n>.jpg, metadata.csv, attribution.txt, licenses/<licence>.txt."""
    meta, jobs, copies = demo_metadata(seed)
    meta = meta.assign(pixels_x=str(photo_size), pixels_y=str(photo_size * 3 // 4))
    ids = list(meta.isic_id)
    with folders.replaced_folder(out_dir, _SCRIPT, "demo export") as tmp:
        work = [(os.path.join(tmp, ids[n] + ".jpg"), *job[:4], photo_size, job[4]) for n, job in enumerate(jobs)]
        for n, (side, kind) in enumerate(_UNSEEN):  # 3 photos of each type, on skin of type I, II, III
            for k in range(3):
                name = os.path.join(tmp, "unseen", f"{side}_{3 * (n % 2) + k + 1}.jpg")
                work.append((name, (seed, 3, n, k), (seed, 4, n, k), kind, k, photo_size, "clinical: overview"))
        try:
            os.makedirs(os.path.join(tmp, "unseen"))
            with interrupts.worker_pool(workers) as pool:
                drawn = pool.imap_unordered(demo.photo, work, 4) if pool else map(demo.photo, work)
                for _ in tqdm(drawn, total=len(work), desc="demo photos"):
                    pass
            for n, i in enumerate(copies):
                shutil.copyfile(os.path.join(tmp, ids[i] + ".jpg"), os.path.join(tmp, ids[len(jobs) + n] + ".jpg"))
            first = ["isic_id", "attribution", "copyright_license"]  # then the other fields, sorted, as isic-cli does
            table = meta[first + sorted(set(meta) - set(first))].sort_values("isic_id")
            table.to_csv(os.path.join(tmp, "metadata.csv"), index=False)
            with open(os.path.join(tmp, "attribution.txt"), "w", encoding="utf-8") as f:
                f.write(attributions(meta))
            os.makedirs(os.path.join(tmp, "licenses"))
            for licence in sorted(set(meta.copyright_license)):
                with open(os.path.join(tmp, "licenses", licence + ".txt"), "w", encoding="utf-8") as f:
                    f.write(
                        f"{licence}: {_LICENSES[licence]}\n\nA stand-in written by {_SCRIPT} for the synthetic demo "
                        "export; a real 'isic image download' writes the licence's full text here.\n"
                    )
        except OSError as e:
            raise messages.UserError(
                f"could not write the demo export {messages.printable(out_dir)} ({e.strerror or e}); free some disk "
                f"space or pass another --out-dir (any previous {messages.printable(out_dir)} is untouched)"
            ) from None
    return meta


def main(argv=None):
    # flags, checked before any drawing
    args = flags.parse_flags(globals(), argv)
    out_dir = os.path.normpath(args.out_dir)
    named = os.path.basename(out_dir) not in ("", ".", "..")
    flags.check(named, "--out-dir", messages.printable(args.out_dir), "name a folder of its own (e.g. demo_data)")
    folders.check_replaceable(out_dir, "--out-dir", _SCRIPT, "demo export")
    flags.check_writable(os.path.dirname(os.path.abspath(out_dir)), "--out-dir", folder=True)

    # the export
    meta = write_demo_export(out_dir, args.seed, args.photo_size, args.workers)
    kinds = meta.diagnosis_3.where(meta.diagnosis_3 != "", "no diagnosis")
    out_dir = messages.printable(out_dir)  # as printed
    print(
        f"wrote a synthetic ISIC export to {out_dir}/: {len(meta)} rows in metadata.csv "
        f"({messages.counts_text(kinds, 9)}), attribution.txt, licenses/, {3 * len(_UNSEEN)} photos in unseen/; "
        "next: python prepare_dataset.py "
        f"--metadata-csv {os.path.join(out_dir, 'metadata.csv')} --images-dir {out_dir}"
    )


if __name__ == "__main__":
    sys.exit(interrupts.run_script(main, "interrupted; the previous demo export (if any) is untouched"))
