"""
Write a synthetic ISIC Archive export to demo_data/: what 'isic image download' would leave there, so the
whole pipeline runs without a download. The photos are drawings, not real lesions: a demo, not data.

    python make_demo_data.py                      # demo_data/metadata.csv, demo_data/ISIC_9*.jpg, demo_data/unseen/
    python prepare_dataset.py --metadata-csv demo_data/metadata.csv --images-dir demo_data
    python make_demo_data.py --photo-size 512     # smaller photos, faster

metadata.csv has the current schema (isic_id, attribution, copyright_license first, then the other fields
sorted): diagnosis_1 Benign or Malignant for about 216 clinical overview photos of each class, 1-3 views
per lesion and 1-3 lesions per patient (lesion_id, patient_id), plus rows prepare_dataset.py must leave out
(Indeterminate, empty diagnosis, dermoscopic, close-up) and 2 byte-identical files under other ids. Benign
lesions are small, round and one brown; malignant ones larger, irregular and of several colours. unseen/
holds 6 more photos (<class>_<n>.jpg) for predict.py. The same SEED and PHOTO_SIZE write the same bytes.
"""

import os
import shutil

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFilter
from tqdm import tqdm

from skinlesion import cli, dataset, files

# -----------------------------------------------------------------------------
OUT_DIR = "demo_data"  # folder for the export (metadata.csv, the photos, unseen/); earlier files are overwritten
PHOTO_SIZE = 1600  # longer side of the photos in px, 64 to 10000 (4:3, like clinical overview photos)
SEED = 42  # >= 0; the same seed writes the same bytes
WORKERS = os.cpu_count()  # processes that draw photos, >= 1 (1: no pool)
# -----------------------------------------------------------------------------
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
    y, x = np.mgrid[-1 : 1 : px * 1j, -1 : 1 : px * 1j]
    k, angles = np.arange(1, 13)[:, None], np.linspace(-np.pi, np.pi, 721)  # border: a radius per angle
    amp = rng.uniform(0.04, 0.12, k.shape) / np.sqrt(k) if malignant else np.where(k == 2, rng.uniform(0, 0.08), 0)
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
    y, x = np.mgrid[-0.5 : 0.5 : h * 1j, -0.5 : 0.5 : w * 1j]
    a = rng.uniform(0, 2 * np.pi)
    light = 1 + rng.uniform(0.1, 0.3) * (x * np.cos(a) + y * np.sin(a)) + 0.03 * smooth_noise(rng, (h, w), 10)
    light += 0.02 * rng.standard_normal((h, w))  # lighting gradient, blotches, grain; then a colour cast:
    pixels = np.asarray(canvas) * light[..., None] * rng.uniform(0.96, 1.04, 3)
    img = Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).resize((size, size * 3 // 4), Image.BILINEAR)
    draw = ImageDraw.Draw(img)
    for _ in range(rng.integers(0, 5)):  # hairs: gently curved dark lines
        t, (x0, y0), a = np.linspace(0, 1, 8), rng.uniform(0, size, 2), rng.uniform(0, np.pi)
        along, across = t * size * rng.uniform(0.1, 0.4), rng.uniform(-0.02, 0.02) * size * np.sin(np.pi * t)
        xs, ys = x0 + along * np.cos(a) - across * np.sin(a), y0 + along * np.sin(a) + across * np.cos(a)
        draw.line(list(zip(xs, ys)), fill=(45, 35, 30), width=max(1, size // 600), joint="curve")
    img.save(path, quality=90)


def demo_metadata(seed):
    """(metadata rows as a DataFrame, a (lesion seed, view seed, looks malignant) job per drawn photo, the
    row numbers whose file is copied under another id) for a synthetic export."""
    rng, lesions = np.random.default_rng(seed), []  # (looks malignant, diagnosis_1, image_type, views)
    for malignant, diagnosis in enumerate(["Benign", "Malignant"]):
        while sum(v for _, d, _, v in lesions if d == diagnosis) < 216:
            lesions.append(
                (bool(malignant), diagnosis, "clinical: overview", rng.choice([1, 2, 3], p=[0.4, 0.35, 0.25]))
            )
    for diagnosis, image_type, n in [
        ("Benign", "dermoscopic", 12),
        ("Malignant", "dermoscopic", 12),
        ("Benign", "clinical: close-up", 10),
        ("Malignant", "clinical: close-up", 10),
        ("Indeterminate", "clinical: overview", 16),
        ("", "clinical: overview", 12),
    ]:
        looks = [diagnosis == "Malignant" or diagnosis != "Benign" and rng.random() < 0.5 for _ in range(n)]
        lesions += [(m, diagnosis, image_type, 1) for m in looks]
    rows, jobs, patient, left = [], [], -1, 0
    for lesion, i in enumerate(rng.permutation(len(lesions))):
        malignant, diagnosis, image_type, views = lesions[i]
        if left == 0:  # a new patient, with 1 to 3 lesions
            patient, left = patient + 1, rng.choice([1, 2, 3], p=[0.7, 0.2, 0.1])
            person = dict(age_approx=5 * rng.integers(4, 17), sex=rng.choice(["female", "male"]))
        left -= 1
        lesion_meta = dict(
            person,
            anatom_site_1=rng.choice(_SITES),
            diagnosis_1=diagnosis,
            image_type=image_type,
            diagnosis_2=diagnosis and f"{diagnosis} melanocytic proliferations",
            lesion_id=f"IL_{9000000 + lesion}",
            patient_id=f"IP_{9000000 + patient}",
        )
        for _ in range(views):
            rows.append(lesion_meta)
            jobs.append(((seed, 1, lesion), (seed, 2, len(jobs)), malignant))
    copies = [int(i) for i in rng.choice(len(rows), 2, replace=False)]  # the same file again, under another id
    ids = [f"ISIC_{9000000 + n}" for n in rng.permutation(len(rows) + len(copies))]
    meta = pd.DataFrame(rows + [rows[i] for i in copies]).assign(
        isic_id=ids, attribution="SYNTHETIC demo image, not a real patient", copyright_license="CC-0"
    )
    return meta, jobs, copies


def write_demo_export(out_dir, seed=SEED, photo_size=PHOTO_SIZE, workers=WORKERS):
    """The synthetic export: out_dir/<isic_id>.jpg, out_dir/unseen/<class>_<n>.jpg, and metadata.csv last (an
    earlier one removed first, the new one written atomically): an interrupted run leaves no metadata.csv."""
    meta, jobs, copies = demo_metadata(seed)
    meta = meta.assign(pixels_x=photo_size, pixels_y=photo_size * 3 // 4)
    ids = list(meta.isic_id)
    work = [(os.path.join(out_dir, ids[n] + ".jpg"), *job, photo_size) for n, job in enumerate(jobs)]
    work += [
        (os.path.join(out_dir, "unseen", f"{c}_{k + 1}.jpg"), (seed, 3, m, k), (seed, 4, m, k), bool(m), photo_size)
        for m, c in enumerate(dataset.SIDES)
        for k in range(3)
    ]
    os.makedirs(os.path.join(out_dir, "unseen"), exist_ok=True)
    if os.path.lexists(os.path.join(out_dir, "metadata.csv")):
        os.remove(os.path.join(out_dir, "metadata.csv"))
    with cli.worker_pool(workers) as pool:
        for _ in tqdm(
            pool.imap_unordered(demo_photo, work, 4) if pool else map(demo_photo, work),
            total=len(work),
            desc="demo photos",
        ):
            pass
    for n, i in enumerate(copies):
        shutil.copyfile(os.path.join(out_dir, ids[i] + ".jpg"), os.path.join(out_dir, ids[len(jobs) + n] + ".jpg"))
    first = ["isic_id", "attribution", "copyright_license"]  # then the other fields, sorted, as in real exports
    files.atomic_write(
        os.path.join(out_dir, "metadata.csv"),
        lambda tmp: meta[first + sorted(set(meta) - set(first))].sort_values("isic_id").to_csv(tmp, index=False),
    )
    return meta


def main(argv=None):
    # flags, checked before any drawing
    args = cli.parse_flags(globals(), argv)
    cli.check(cli.in_range(args.photo_size, 64, 10000), "--photo-size", args.photo_size, "use 64 to 10000 (px)")
    cli.check(cli.in_range(args.seed, 0, 2**32 - 1), "--seed", args.seed, "use a whole number >= 0 (< 2**32)")
    cli.check(cli.in_range(args.workers, 1, 1024), "--workers", args.workers, "use 1 to 1024 processes")
    cli.check_writable(args.out_dir, "--out-dir", folder=True)
    cli.check_writable(os.path.join(args.out_dir, "unseen"), "--out-dir", folder=True)

    # the export
    meta = write_demo_export(args.out_dir, args.seed, args.photo_size, args.workers)
    print(
        f"wrote a synthetic ISIC export to {args.out_dir}/: {len(meta)} rows in metadata.csv, 6 photos in unseen/; "
        f"next: python prepare_dataset.py --metadata-csv {os.path.join(args.out_dir, 'metadata.csv')} "
        f"--images-dir {args.out_dir}"
    )


if __name__ == "__main__":
    cli.run_script(main, "interrupted; run make_demo_data.py again to finish the demo export")
