"""make_demo_data.py: the synthetic export is shaped like a real one, the same seed writes the same bytes, and
flag mistakes are one line."""

import hashlib
import os

import pandas as pd
import pytest
from PIL import Image

import make_demo_data
from conftest import fingerprint, main_fails, run


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo export (64 px photos, to save time) written twice, on the command line with all cores and in this
    process with one, then prepared as `make demo` does; returns the folder."""
    folder = tmp_path_factory.mktemp("demo")
    prepare = ["--metadata-csv", "demo_data/metadata.csv", "--images-dir", "demo_data"]
    for script, args in [("make_demo_data.py", ["--photo-size", 64]), ("prepare_dataset.py", prepare)]:
        r = run(script, *args, cwd=folder)
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
        assert r.stdout.strip().splitlines()[-1].startswith("wrote ")
    make_demo_data.main(["--out-dir", str(folder / "again"), "--photo-size", "64", "--workers", "1"])
    return folder


def test_demo_export_is_isic_shaped_deterministic_and_prepared(demo):
    meta = pd.read_csv(demo / "demo_data" / "metadata.csv", dtype=str, keep_default_na=False)
    assert list(meta.columns) == [
        "isic_id",
        "attribution",
        "copyright_license",
        "age_approx",
        "anatom_site_1",
        "diagnosis_1",
        "diagnosis_2",
        "image_type",
        "lesion_id",
        "patient_id",
        "pixels_x",
        "pixels_y",
        "sex",
    ]
    assert meta.attribution.str.startswith("SYNTHETIC").all() and meta.isic_id.str.fullmatch(r"ISIC_9\d{6}").all()
    assert {"Indeterminate", ""} <= set(meta.diagnosis_1)
    assert {"dermoscopic", "clinical: close-up"} <= set(meta.image_type)
    assert meta.lesion_id.duplicated().any() and (meta.groupby("patient_id").lesion_id.nunique() > 1).any()
    unseen = sorted(os.listdir(demo / "demo_data" / "unseen"))
    assert unseen == [f"{c}_{k}.jpg" for c in ["benign", "malignant"] for k in (1, 2, 3)]
    with Image.open(demo / "demo_data" / "unseen" / "benign_1.jpg") as img:
        assert img.size == (64, 48)
    digests = [hashlib.sha256((demo / "demo_data" / f"{i}.jpg").read_bytes()).digest() for i in meta.isic_id]
    assert len(digests) - len(set(digests)) == 2  # two byte-identical copies under other ids
    assert fingerprint(demo / "demo_data") == fingerprint(demo / "again")  # the same seed: the same bytes
    m = pd.read_csv(demo / "dataset" / "manifest.csv", dtype=str, keep_default_na=False)
    assert m.label.value_counts().to_dict() == {"benign": 200, "malignant": 200} and m.sha256.is_unique
    for col in ["lesion_id", "patient_id"]:
        assert (m.groupby(col).split.nunique() == 1).all()


@pytest.mark.parametrize(
    "flags, expected",
    [
        ("--seed -1", "--seed -1: use a whole number >= 0"),
        ("--photo-size 32", "--photo-size 32: use 64 to 10000"),
        ("--workers 0", "--workers 0: use 1 to 1024 processes"),
        ("--out-dir notes.txt", "--out-dir notes.txt is a file; pass a folder"),
    ],
)
def test_demo_flag_mistakes(flags, expected, capsys):
    with open("notes.txt", "w") as f:
        f.write("a file, not a folder")
    main_fails(make_demo_data.main, flags.split(), capsys, expected)
    assert os.listdir() == ["notes.txt"]
