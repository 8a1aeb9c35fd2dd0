"""A balanced sample of an export's photos, decoded: each class's candidates in a seeded order, in rounds, until
it has its number of readable, distinct photos, each shrunk once (clinical photos are often 3000+ px wide) by
worker processes."""

import os
import shutil

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from skinlesion import cli, files, interrupts, photos


def process_image(job):
    """Worker: hash, decode and shrink one image into out_dir; error: why it is unusable; OSError: out_dir unwritable"""
    isic_id, src, out_dir, resize_to = job
    if files.file_kind(src):  # turned into a named pipe since the index: opening it would block forever
        return dict(isic_id=isic_id, error="not a regular file")
    try:
        sha256 = files.file_sha256(src)
        width, height = photos.image_size(src)
        img = photos.load_image(src, min_side=resize_to)  # upright RGB; raises on anything unreadable
    except photos.NotAPhoto:  # counted under one cause, whatever its size
        return dict(isic_id=isic_id, error=f"one side over {photos.MAX_ASPECT} times the other")
    except Exception as e:  # truncated, empty, not an image, decompression bomb...: counted, never fatal
        return dict(isic_id=isic_id, error=type(e).__name__)
    name = isic_id + (".jpg" if resize_to else os.path.splitext(src)[1].lower())
    out = os.path.join(out_dir, name)
    try:
        if resize_to is None:
            shutil.copyfile(src, out)
        else:
            scale = resize_to / min(img.size)
            if scale < 1:
                size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
                img = img.resize(size, Image.LANCZOS, reducing_gap=3.0)
            img.save(out, quality=95)
    except OSError as e:  # a full disk, a quota: the dataset's fault, not the image's
        raise OSError(
            f"could not write {cli.printable(out)} ({e.strerror or e}); free some disk space or pass another "
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
