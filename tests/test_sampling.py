"""skinlesion/sampling.py: a balanced sample of an export's photos: n_per_class readable, distinct photos per class
(fewer where a class has fewer), unreadable and duplicate ones counted, only what is chosen left in the output
folder, shrunk once; the progress bar's total is known at once and never changes."""

import os
import shutil

import pandas as pd
import pytest
from PIL import Image

from conftest import noise_image
from skinlesion import sampling


def candidates(folder):
    """benign: 6 good photos, one that is not a photo, one byte-identical copy; malignant: 3 good, 1 broken."""
    os.makedirs(folder)
    for n in range(6):
        noise_image(os.path.join(folder, f"ISIC_{n:07d}.jpg"), n, size=(80, 60))
    for n in range(10, 13):
        noise_image(os.path.join(folder, f"ISIC_{n:07d}.jpg"), n, size=(60, 90))
    with open(os.path.join(folder, "ISIC_0000006.jpg"), "w") as f:
        f.write("not a photo")
    shutil.copyfile(os.path.join(folder, "ISIC_0000000.jpg"), os.path.join(folder, "ISIC_0000007.jpg"))
    with open(os.path.join(folder, "ISIC_0000013.jpg"), "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 truncated")
    ids = [*range(8), *range(10, 14)]
    return pd.DataFrame(
        dict(
            isic_id=[f"ISIC_{n:07d}" for n in ids],
            path=[os.path.join(folder, f"ISIC_{n:07d}.jpg") for n in ids],
            label=["benign"] * 8 + ["malignant"] * 4,
        )
    )


@pytest.fixture
def bar_records(monkeypatch):
    """Every value the decoding bar's total is set to, and every step it is moved by."""
    records = dict(totals=[], steps=[])

    class Recording(sampling.tqdm):
        def __setattr__(self, name, value):
            if name == "total":
                records["totals"].append(value)
            super().__setattr__(name, value)

        def update(self, n=1):
            records["steps"].append(n)
            return super().update(n)

    monkeypatch.setattr(sampling, "tqdm", Recording)
    return records


@pytest.mark.parametrize("workers", [1, 2])
def test_decode_balanced_takes_distinct_readable_photos_and_counts_the_rest(tmp_path, bar_records, workers):
    cands = candidates(str(tmp_path / "export"))
    (tmp_path / "out").mkdir()
    chosen, unreadable, duplicates = sampling.decode_balanced(cands, 7, 0, str(tmp_path / "out"), 32, workers)
    assert chosen.label.value_counts().to_dict() == {"benign": 6, "malignant": 3}  # all good ones: fewer than 7
    assert chosen.sha256.is_unique and set(chosen.columns) >= {"isic_id", "path", "label", "sha256", "file"}
    assert sorted(unreadable) == ["ISIC_0000006 (UnidentifiedImageError)", "ISIC_0000013 (OSError)"]
    assert len(duplicates) == 1 and duplicates[0] in ("ISIC_0000000", "ISIC_0000007")
    assert sorted(os.listdir(tmp_path / "out")) == sorted(chosen.file)  # the duplicate's file was removed
    for file, width, height in zip(chosen.file, chosen.width, chosen.height):
        with Image.open(tmp_path / "out" / file) as img:
            assert min(img.size) == 32 and (width, height) in ((80, 60), (60, 90))  # shrunk; stored size kept
    assert bar_records["totals"] == [7 + 4] and sum(bar_records["steps"]) == 9


def test_decode_balanced_stops_at_n_per_class_and_the_bar_total_never_changes(tmp_path, bar_records):
    cands = candidates(str(tmp_path / "export"))
    (tmp_path / "out").mkdir()
    chosen, unreadable, duplicates = sampling.decode_balanced(cands, 2, 1, str(tmp_path / "out"), None, 1)
    assert chosen.label.value_counts().to_dict() == {"benign": 2, "malignant": 2}
    assert len(os.listdir(tmp_path / "out")) == 4  # only what was chosen was decoded and kept
    for isic_id, file in zip(chosen.isic_id, chosen.file):  # resize_to None: copied as they are
        with open(tmp_path / "out" / file, "rb") as a, open(tmp_path / "export" / f"{isic_id}.jpg", "rb") as b:
            assert a.read() == b.read()
    assert bar_records["totals"] == [4] and sum(bar_records["steps"]) == 4


def test_decode_balanced_rounds_replace_unreadable_photos(tmp_path, bar_records):
    """Every seed: 4 readable, distinct benign photos out of 6 good ones, a broken one and a copy."""
    cands = candidates(str(tmp_path / "export"))
    for seed in range(6):
        out = tmp_path / f"out{seed}"
        out.mkdir()
        chosen, unreadable, duplicates = sampling.decode_balanced(cands, 4, seed, str(out), 32, 1)
        assert chosen.label.value_counts().to_dict() == {"benign": 4, "malignant": 3}
        assert len(chosen) + len(unreadable) + len(duplicates) <= 4 + 1 + 1 + 4  # never more than needed
        assert sorted(os.listdir(out)) == sorted(chosen.file)
    # the total is what is wanted, min(4, 8) + min(4, 4), known at once; one malignant photo is unreadable
    assert bar_records["totals"] == [8] * 6 and sum(bar_records["steps"]) == 7 * 6


def test_an_image_far_longer_than_wide_is_counted_with_its_cause(tmp_path):
    """Refused from its header (its resize would cost without bound), under one cause whatever its size; a 10:1
    photo, the most elongated taken, is shrunk."""
    noise_image(tmp_path / "ISIC_0000001.png", 1, size=(1100, 99), format="PNG")
    noise_image(tmp_path / "ISIC_0000002.png", 2, size=(1000, 100), format="PNG")
    (tmp_path / "out").mkdir()
    thin = sampling.process_image(("ISIC_0000001", str(tmp_path / "ISIC_0000001.png"), str(tmp_path / "out"), 32))
    assert thin == dict(isic_id="ISIC_0000001", error="one side over 10 times the other")
    ten = sampling.process_image(("ISIC_0000002", str(tmp_path / "ISIC_0000002.png"), str(tmp_path / "out"), 32))
    assert ten["error"] == "" and os.listdir(tmp_path / "out") == ["ISIC_0000002.jpg"]
