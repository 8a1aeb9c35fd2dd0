"""
Write a synthetic ISIC Archive export to demo_data/: what 'isic image download' would leave there, so the
whole pipeline runs without a download. The photos are drawings, not real lesions: a demo, not data.

    python make_demo_data.py                      # demo_data/: metadata.csv, ISIC_9*.jpg, attribution.txt, ...
    python prepare_dataset.py --metadata-csv demo_data/metadata.csv --images-dir demo_data
    python make_demo_data.py --photo-size 512     # smaller photos, faster

What it holds: docs/reference.md.
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
from PIL import Image, ImageDraw, ImageFilter
from tqdm import tqdm

from skinlesion import flags, folders, messages

# -----------------------------------------------------------------------------
OUT_DIR = "demo_data"  # folder for the export: missing, empty or made by this script (then replaced as a whole)
PHOTO_SIZE = 1600  # longer side of the photos in px, 64 to 10000 (4:3, like clinical overview photos)
SEED = 42  # 0 to 2**32 - 1; the same seed writes the same bytes
WORKERS = os.cpu_count()  # processes that draw photos, 1 to 1024 (1: no pool)
# -----------------------------------------------------------------------------
_SCRIPT = "make_demo_data.py"
_TYPES = {  # the type drawn (_DRAW): diagnosis_1, diagnosis_2, diagnosis_3 as in ISIC's schema
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
_SKIN = np.array(
    [[238, 204, 180], [230, 190, 160], [218, 172, 140], [196, 150, 114], [156, 110, 80], [112, 78, 58]]
)  # I-VI
_PALETTE = np.array([[92, 55, 34], [36, 28, 28], [104, 112, 134], [172, 84, 78], [150, 102, 66]])  # of a melanoma
_PALETTE_BIAS = np.array([0.2, 0.5, 0.3, 0.0, -0.4])[:, None, None]  # dark brown, black, blue-grey, red, tan
_DIAMETERS = dict(  # type: range of the lesion's diameter / the photo's height
    nevus=(0.2, 0.38),
    seborrheic_keratosis=(0.45, 0.7),
    dermatofibroma=(0.2, 0.35),
    melanoma=(0.55, 0.85),
    basal_cell_carcinoma=(0.5, 0.72),
    actinic_keratosis=(0.3, 0.6),
    atypical_melanocytic=(0.4, 0.7),
)


# ---------------------------------------------------------------------------- the drawings
def smooth_noise(rng, shape, cells):
    """Gaussian noise on a cells x cells grid, smoothly (bicubic) enlarged to shape (h, w)."""
    small = Image.fromarray(rng.standard_normal((cells, cells)).astype(np.float32))
    return np.asarray(small.resize(shape[::-1], Image.BICUBIC))


def lesion_mask(rng, px, amp):
    """(alpha, r) on a px x px patch: a lesion whose border lies at 0.6 of the half width times 1 + the sum of
    amp[k-1] cos(k angle + a random phase); alpha 1 inside, 0 outside; r the distance from the centre relative
    to that 0.6."""
    y, x = np.mgrid[-1 : 1 : px * 1j, -1 : 1 : px * 1j]
    k, angles = np.arange(1, len(amp) + 1)[:, None], np.linspace(-np.pi, np.pi, 721)
    border = 0.6 * (1 + (np.asarray(amp)[:, None] * np.cos(k * angles + rng.uniform(0, 2 * np.pi, k.shape))).sum(0))
    alpha = np.clip((np.interp(np.arctan2(y, x), angles, border) - np.hypot(x, y)) * px / 4, 0, 1)
    return alpha, np.hypot(x, y) / 0.6


def rgba(colour, alpha):
    """An RGBA patch from (px, px, 3) colours and (px, px) alpha in 0-1."""
    return Image.fromarray(np.dstack([colour, alpha * 255]).clip(0, 255).astype(np.uint8), "RGBA")


def inside(rng, px, radius):
    """A random point (x, y) in px of the patch, within radius (relative to the lesion's 0.6) of its centre."""
    a, r = rng.uniform(0, 2 * np.pi), 0.6 * radius * np.sqrt(rng.uniform())
    return (1 + r * np.cos(a)) * px / 2, (1 + r * np.sin(a)) * px / 2


def draw_nevus(rng, px):
    """Round, symmetric, one brown."""
    alpha, _ = lesion_mask(rng, px, [0, rng.uniform(0, 0.08)])
    brown = np.array([176, 126, 88]) + rng.uniform(0, 1) * np.array([-50, -42, -32])
    colour = brown * (1 + 0.03 * smooth_noise(rng, (px, px), 4))[..., None]
    return rgba(colour, alpha).filter(ImageFilter.GaussianBlur(px / 80))


def draw_melanoma(rng, px):
    """Irregular, asymmetric border, patches of dark brown, black, blue-grey and red."""
    alpha, _ = lesion_mask(rng, px, rng.uniform(0.04, 0.12, 12) / np.sqrt(np.arange(1, 13)))
    colour = _PALETTE[np.argmax([smooth_noise(rng, (px, px), 5) for _ in _PALETTE] + _PALETTE_BIAS, axis=0)]
    return rgba(colour, alpha).filter(ImageFilter.GaussianBlur(px / 50))


def draw_keratosis(rng, px, light=(192, 172, 140), dark=(128, 116, 104)):
    """Seborrheic keratosis: light tan to grey-brown, waxy and rough (a coarse mottle, pale milia-like dots and
    dark crypts), a lobulated but sharp 'stuck-on' border with a slightly darker rim. Other colours: an actinic
    keratosis (red, scaly)."""
    k = np.arange(1, 13)
    alpha, r = lesion_mask(rng, px, rng.uniform(0.01, 0.04, 12) / np.sqrt(k) * (k >= 2))
    base = np.array(light) + rng.uniform(0, 1) * (np.array(dark) - light)
    rough = 1 + 0.08 * smooth_noise(rng, (px, px), max(4, px // 8)) + 0.04 * rng.standard_normal((px, px))
    img = rgba(base * (rough * (1 - 0.12 * (r > 0.85)))[..., None], alpha)
    draw = ImageDraw.Draw(img)
    for fill, n, size in [((228, 216, 186, 255), rng.integers(10, 24), 0.016), ((120, 96, 76, 255), 16, 0.014)]:
        for _ in range(n):  # milia-like dots, then crypts
            (x, y), d = inside(rng, px, 0.8), px * size * rng.uniform(0.6, 1.4)
            draw.ellipse([x - d, y - d, x + d, y + d], fill=fill)
    return img.filter(ImageFilter.GaussianBlur(px / 250))


def draw_basal_cell_carcinoma(rng, px):
    """A pink, pearly, translucent nodule (a paler rolled rim), fine red branching vessels, a few blue-grey
    ovoid nests, and a small dark ulcer near the centre."""
    alpha, r = lesion_mask(rng, px, [0, rng.uniform(0, 0.1), rng.uniform(0, 0.05)])
    pink = np.array([218, 120, 160]) + rng.uniform(-1, 1) * np.array([10, 12, 12])
    colour = pink + (np.clip((r - 0.55) / 0.45, 0, 1) ** 2)[..., None] * (np.array([246, 220, 228]) - pink)
    img = rgba(colour * (1 + 0.02 * smooth_noise(rng, (px, px), 4))[..., None], 0.93 * alpha)
    draw = ImageDraw.Draw(img)
    for _ in range(rng.integers(3, 7)):  # a vessel from near the rim inwards, meandering, with a branch
        a = rng.uniform(0, 2 * np.pi)
        points, heading = [np.array([np.cos(a), np.sin(a)]) * 0.3 * px * rng.uniform(0.6, 0.95) + px / 2], a + np.pi
        for _ in range(6):
            heading += rng.normal(0, 0.6)
            points.append(points[-1] + px * 0.035 * np.array([np.cos(heading), np.sin(heading)]))
        branch = [points[3], points[3] + px * 0.07 * np.array([np.cos(heading + 1), np.sin(heading + 1)])]
        for line in (points, branch):
            draw.line([tuple(p) for p in line], fill=(176, 36, 50, 255), width=max(1, px // 90))
    for _ in range(rng.integers(3, 7)):
        (x, y), d = inside(rng, px, 0.7), px * rng.uniform(0.035, 0.07)
        draw.ellipse([x - d, y - 0.7 * d, x + d, y + 0.7 * d], fill=(72, 80, 110, 255))
    (x, y), d = inside(rng, px, 0.2), px * rng.uniform(0.05, 0.1)
    draw.ellipse([x - d, y - 0.8 * d, x + d, y + 0.8 * d], fill=(60, 26, 30, 255))
    img.putalpha(Image.fromarray((0.93 * alpha * 255).astype(np.uint8)))  # nothing drawn outside the nodule
    return img.filter(ImageFilter.GaussianBlur(px / 120))


def draw_dermatofibroma(rng, px):
    """A small firm papule: a light brown ring around a whitish pink, scar-like centre."""
    alpha, r = lesion_mask(rng, px, [0, rng.uniform(0, 0.06)])
    ring, centre = np.array([168, 118, 92]), np.array([228, 200, 190])
    colour = ring + np.clip(1 - r / 0.55, 0, 1)[..., None] * (centre - ring)
    return rgba(colour, alpha).filter(ImageFilter.GaussianBlur(px / 60))


def draw_actinic_keratosis(rng, px):
    return draw_keratosis(rng, px, light=(214, 132, 118), dark=(188, 108, 98))


_DRAW = dict(  # type: its drawing, a function (rng, px) -> RGBA patch
    nevus=draw_nevus,
    seborrheic_keratosis=draw_keratosis,
    dermatofibroma=draw_dermatofibroma,
    melanoma=draw_melanoma,
    basal_cell_carcinoma=draw_basal_cell_carcinoma,
    actinic_keratosis=draw_actinic_keratosis,
    atypical_melanocytic=draw_melanoma,
)


def dermoscopic(img, rng):
    """A drawn photo as a dermatoscope sees it: magnified about twice, its contrast raised and its colours cooled,
    through the round field of the lens (black beyond it)."""
    w, h = img.size
    zoom = rng.uniform(1.7, 2.3)
    box = (w - w / zoom) / 2, (h - h / zoom) / 2, (w + w / zoom) / 2, (h + h / zoom) / 2
    pixels = np.asarray(img.resize((w, h), Image.BICUBIC, box=box), dtype=np.float64)
    mean = pixels.mean((0, 1))
    pixels = (pixels - mean) * rng.uniform(1.3, 1.6) + mean * np.array([0.92, 0.88, 1.08])
    y, x = np.mgrid[0:h, 0:w]
    field = np.clip((1 - np.hypot(x - w / 2, y - h / 2) / (0.5 * h * rng.uniform(1.0, 1.15))) * 25, 0, 1)[..., None]
    return Image.fromarray((pixels * field + 10 * (1 - field)).clip(0, 255).astype(np.uint8))


def photo(job):
    """Worker: a clinical overview photo (4:3, longer side size px) of one lesion of a type in one view (rotation,
    position, lighting, hairs) on skin of a Fitzpatrick type (0-5; lesions darken with the skin), drawn at up to
    400 x 300 and enlarged; for the image type "dermoscopic", as a dermatoscope sees it. The same seeds give the
    same bytes."""
    path, lesion_seed, view_seed, kind, skin, size, image_type = job
    rng, lesion_rng = np.random.default_rng(view_seed), np.random.default_rng(lesion_seed)
    w = min(size, 400)
    h = w * 3 // 4
    diameter = h * lesion_rng.uniform(*_DIAMETERS[kind])
    patch = _DRAW[kind](lesion_rng, int(diameter / 0.6 * rng.uniform(0.9, 1.1)))
    patch = patch.rotate(rng.uniform(0, 360), Image.BILINEAR)
    light_skin = _SKIN[min(skin, 2)]
    canvas = Image.new("RGB", (w, h), tuple(int(v) for v in (light_skin * rng.uniform(0.95, 1.05, 3)).clip(0, 255)))
    canvas.paste(patch, tuple((np.array([w, h]) * rng.uniform(0.42, 0.58, 2) - patch.width / 2).astype(int)), patch)
    y, x = np.mgrid[-0.5 : 0.5 : h * 1j, -0.5 : 0.5 : w * 1j]
    a = rng.uniform(0, 2 * np.pi)
    light = 1 + rng.uniform(0.1, 0.3) * (x * np.cos(a) + y * np.sin(a)) + 0.03 * smooth_noise(rng, (h, w), 10)
    light += 0.02 * rng.standard_normal((h, w))  # lighting gradient, blotches, grain; then a colour cast and the skin:
    pixels = np.asarray(canvas) * light[..., None] * rng.uniform(0.96, 1.04, 3) * (_SKIN[skin] / light_skin)
    img = Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).resize((size, size * 3 // 4), Image.BILINEAR)
    draw = ImageDraw.Draw(img)
    for _ in range(rng.integers(0, 5)):  # hairs: gently curved dark lines
        t, (x0, y0), a = np.linspace(0, 1, 8), rng.uniform(0, size, 2), rng.uniform(0, np.pi)
        along, across = t * size * rng.uniform(0.1, 0.4), rng.uniform(-0.02, 0.02) * size * np.sin(np.pi * t)
        xs, ys = x0 + along * np.cos(a) - across * np.sin(a), y0 + along * np.sin(a) + across * np.cos(a)
        draw.line(list(zip(xs, ys)), fill=(45, 35, 30), width=max(1, size // 600), joint="curve")
    if image_type == "dermoscopic":
        img = dermoscopic(img, rng)
    img.save(path, quality=90)


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
                drawn = pool.imap_unordered(photo, work, 4) if pool else map(photo, work)
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
