"""prepare_dataset.py on exports shaped like real ISIC ones (both label schemas), the demo export, and
the real sample in ../shared when it is there."""
import glob
import hashlib
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import prepare_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "prepare_dataset.py")
REAL_SAMPLE = os.path.join(ROOT, "..", "shared", "real_isic_sample")


def make_image(path, seed, size=(48, 40), **save_args):
    """Random pixels, so that no two test images are byte-identical by accident."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, **save_args)


def write_export(folder, rows, ext=".jpg", images=True):
    """An export as 'isic image download' writes it: metadata.csv with isic_id, attribution,
    copyright_license first, then the other fields sorted; an image <isic_id><ext> per row."""
    os.makedirs(folder, exist_ok=True)
    df = pd.DataFrame(rows).assign(attribution="Anonymous", copyright_license="CC-BY", pixels_x=48, pixels_y=40)
    first = ["isic_id", "attribution", "copyright_license"]
    df[first + sorted(set(df) - set(first))].to_csv(os.path.join(folder, "metadata.csv"), index=False)
    for row in rows if images else []:
        make_image(os.path.join(folder, row["isic_id"] + ext), int(row["isic_id"][5:]))


def lesion_rows(n_lesions, start=0, label_column="diagnosis_1", labels=("Benign", "Malignant")):
    """1-3 views per lesion, two lesions per patient (one of each class)."""
    rows = []
    for lesion in range(n_lesions):
        for view in range(1 + lesion % 3):
            rows.append({"isic_id": f"ISIC_{start + len(rows):07d}", label_column: labels[lesion % 2],
                         "image_type": "clinical: overview", "lesion_id": f"IL_{start + lesion:07d}",
                         "patient_id": f"IP_{start + lesion // 2:07d}"})
    return rows


def prepare(tmp_path, *args):
    """prepare_dataset.main in this process, outputs under tmp_path; returns the manifest."""
    dataset = str(tmp_path / "dataset")
    prepare_dataset.main(["--dataset-dir", dataset, "--workers", "1", *args])
    return pd.read_csv(os.path.join(dataset, "manifest.csv"), dtype=str, keep_default_na=False)


def run(tmp_path, *args, timeout=120):
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=timeout)


def dataset_files(folder):
    return sorted(os.path.relpath(p, folder) for p in glob.glob(os.path.join(folder, "*", "*", "*")))


def test_filters_labels_ids_and_duplicate_rows():
    df = pd.DataFrame({
        "isic_id": ["ISIC_0000001", "ISIC_0000002", "ISIC_0000003", "ISIC_0000004", "ISIC_0000005", "ISIC_0000006",
                    "ISIC_0000007", "ISIC_0000008", "../../x", "/etc/passwd", "ISIC_0000001", "ISIC_123"],
        "diagnosis_1": ["Benign", "Malignant", "Benign", "Malignant", "Indeterminate", "", "benign", "Malignant",
                        "Benign", "Benign", "Benign", "Malignant"],
        "image_type": ["clinical: overview", "overview", "dermoscopic", "clinical: close-up", "clinical: overview",
                       "clinical: overview", "clinical: overview", "TBP tile: close-up"] + ["clinical: overview"] * 4,
    })
    kept, steps = prepare_dataset.filter_rows(df, ["clinical: overview"])
    assert list(kept.isic_id) == ["ISIC_0000001", "ISIC_0000002"]  # 'overview' is the pre-2023 name
    assert list(kept.label) == ["benign", "malignant"]
    assert [n for _, n, _ in steps] == [12, 9, 6, 3, 2]
    why = dict((step, reason) for step, _, reason in steps)
    assert "dermoscopic 1" in why["image_type clinical: overview or overview"]
    assert "'Indeterminate' 1" in why["with a definite label"] and "empty 1" in why["with a definite label"]
    assert "'benign' 1" in why["with a definite label"]  # wrong case: not guessed
    assert "'../../x'" in why["with a valid isic_id"] and "1 repeated" in why["unique isic_id"]


def test_legacy_and_conflicting_labels():
    legacy = pd.DataFrame({"isic_id": ["a", "b", "c", "d", "e", "f"],
                           "benign_malignant": ["benign", "malignant", "indeterminate", "indeterminate/benign",
                                                "indeterminate/malignant", ""]})
    assert list(prepare_dataset.label_rows(legacy)) == [
        "benign", "malignant", "'indeterminate'", "'indeterminate/benign'", "'indeterminate/malignant'", "empty"]
    both = pd.DataFrame({"isic_id": list("abcde"),
                         "diagnosis_1": ["Benign", "Malignant", "", "Benign", "Indeterminate"],
                         "benign_malignant": ["benign", "benign", "malignant", "", "indeterminate"]})
    assert list(prepare_dataset.label_rows(both)) == ["benign", "conflicting", "malignant", "benign", "'Indeterminate'"]


def test_union_find_groups_lesions_and_patients():
    df = pd.DataFrame({"isic_id": ["ISIC_1", "ISIC_2", "ISIC_3", "ISIC_4", "ISIC_5", "ISIC_6"],
                       "lesion_id": ["IL_1", "IL_1", "IL_2", "", "", "IL_3"],
                       "patient_id": ["", "IP_1", "IP_1", "IP_1", "", ""]})
    groups = list(prepare_dataset.group_ids(df))
    assert len(set(groups[:4])) == 1  # linked through IL_1 and IP_1
    assert len(set(groups)) == 3


def test_grouped_balanced_split_from_two_downloads(tmp_path, capsys, monkeypatch):
    # one 'isic image download' per class into sub-folders, each with its own metadata.csv; no top-level one
    rows = lesion_rows(40)
    write_export(tmp_path / "isic_images" / "benign", [r for r in rows if r["diagnosis_1"] == "Benign"])
    write_export(tmp_path / "isic_images" / "malignant", [r for r in rows if r["diagnosis_1"] == "Malignant"])
    monkeypatch.chdir(tmp_path)
    m = prepare(tmp_path, "--n-per-class", "25", "--workers", "2")
    assert "reading the 2 metadata.csv" in capsys.readouterr().out
    assert (m.label.value_counts() == 25).all()
    for col in ["lesion_id", "patient_id"]:
        assert (m.groupby(col).split.nunique() == 1).all(), f"a {col} spans two splits"
    assert set(m.split) == {"train", "val", "test"}
    assert dataset_files(tmp_path / "dataset") == sorted(m.file)
    for split in ["train", "val", "test"]:
        assert all(os.path.isdir(tmp_path / "dataset" / split / c) for c in ["benign", "malignant"])
    assert m.source_file.map(os.path.isfile).all() and (m.width == "48").all()
    row = m.iloc[0]
    with open(row.source_file, "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == row.sha256
    again = prepare(tmp_path, "--n-per-class", "25")  # the same seed: the same dataset
    assert again.equals(m)


def test_legacy_schema_without_optional_columns_png_fewer_than_asked_and_no_val(tmp_path, capsys):
    rows = [{"isic_id": f"ISIC_{i:07d}", "benign_malignant": "benign" if i < 12 else "malignant"} for i in range(16)]
    rows += [{"isic_id": "ISIC_0000099", "benign_malignant": "indeterminate/malignant"}]
    write_export(tmp_path / "export", rows, ext=".png")
    m = prepare(tmp_path, "--metadata-csv", str(tmp_path / "export" / "metadata.csv"), "--images-dir",
                str(tmp_path / "export"), "--n-per-class", "10", "--val-fraction", "0", "--test-fraction", "0.25")
    out, err = capsys.readouterr()
    assert "no image_type column" in out and "no lesion_id column" in out
    assert "'indeterminate/malignant' 1" in out
    assert m.label.value_counts().to_dict() == {"benign": 10, "malignant": 4}
    assert "only 4 usable malignant images" in err
    assert set(m.split) == {"train", "test"} and not os.path.exists(tmp_path / "dataset" / "val")
    assert m.source_file.str.endswith(".png").all() and m.file.str.endswith(".jpg").all()


def test_missing_unreadable_duplicate_and_symlinked_images(tmp_path, capsys, monkeypatch):
    rows = lesion_rows(12)
    write_export(tmp_path / "isic_images", rows)
    images = tmp_path / "isic_images"
    os.remove(images / "ISIC_0000000.jpg")  # missing
    open(images / "ISIC_0000001.jpg", "wb").close()  # zero bytes
    (images / "ISIC_0000002.jpg").write_bytes((images / "ISIC_0000003.jpg").read_bytes()[:200])  # truncated
    (images / "ISIC_0000004.jpg").write_text("not an image")
    (images / "ISIC_0000005.jpg").write_bytes((images / "ISIC_0000006.jpg").read_bytes())  # same bytes
    make_image(tmp_path / "outside.jpg", 1)
    os.remove(images / "ISIC_0000007.jpg")
    os.symlink(tmp_path / "outside.jpg", images / "ISIC_0000007.jpg")  # points out of the export: refused
    monkeypatch.chdir(tmp_path)
    m = prepare(tmp_path, "--n-per-class", "100")
    out = capsys.readouterr().out
    assert "missing 1: ISIC_0000000" in out and "refused 1 symlinks" in out
    assert "unreadable 3" in out and "1 duplicate images kept once" in out
    assert len(m) == len(rows) - 6
    assert not {"ISIC_0000000", "ISIC_0000001", "ISIC_0000002", "ISIC_0000004", "ISIC_0000007"} & set(m.isic_id)
    assert len({"ISIC_0000005", "ISIC_0000006"} & set(m.isic_id)) == 1 and m.sha256.is_unique


def test_exif_orientation_resize_and_never_upscale(tmp_path, monkeypatch):
    rows = [{"isic_id": "ISIC_0000001", "diagnosis_1": "Benign"},
            {"isic_id": "ISIC_0000002", "diagnosis_1": "Malignant"}]
    write_export(tmp_path / "isic_images", rows)
    wide = np.zeros((40, 80, 3), np.uint8)
    wide[:, :40] = (255, 0, 0)  # left half red, right half blue, as stored
    wide[:, 40:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    Image.fromarray(wide).save(tmp_path / "isic_images" / "ISIC_0000001.jpg", exif=exif)
    monkeypatch.chdir(tmp_path)
    m = prepare(tmp_path, "--resize-to", "20", "--val-fraction", "0", "--test-fraction", "0").set_index("isic_id")
    with Image.open(tmp_path / "dataset" / m.file["ISIC_0000001"]) as img:
        assert img.size == (20, 40)  # upright, shorter side 20
        top, bottom = np.asarray(img)[3, 10], np.asarray(img)[-4, 10]
    assert top[0] > 200 > top[2] and bottom[2] > 200 > bottom[0]  # the left edge is now on top
    assert (m.width["ISIC_0000001"], m.height["ISIC_0000001"]) == ("80", "40")  # the original, as stored
    m = prepare(tmp_path, "--resize-to", "256", "--val-fraction", "0", "--test-fraction", "0").set_index("isic_id")
    with Image.open(tmp_path / "dataset" / m.file["ISIC_0000002"]) as img:
        assert img.size == (48, 40)  # smaller than RESIZE_TO: kept, never enlarged
    m = prepare(tmp_path, "--resize-to", "none", "--val-fraction", "0", "--test-fraction", "0").set_index("isic_id")
    with open(tmp_path / "dataset" / m.file["ISIC_0000002"], "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == m.sha256["ISIC_0000002"]  # the original bytes


def test_rerun_replaces_the_dataset_and_cleans_up(tmp_path):
    first, second = lesion_rows(12), lesion_rows(12, start=500)
    write_export(tmp_path / "a", first)
    write_export(tmp_path / "b", second)
    os.makedirs(tmp_path / "dataset.tmp-99999" / "train")  # left by a killed run
    args = ["--n-per-class", "100", "--val-fraction", "0", "--test-fraction", "0"]
    for export in ["a", "b"]:
        m = prepare(tmp_path, "--images-dir", str(tmp_path / export),
                    "--metadata-csv", str(tmp_path / export / "metadata.csv"), *args)
    assert dataset_files(tmp_path / "dataset") == sorted(m.file)
    assert set(m.isic_id) == {r["isic_id"] for r in second}
    assert sorted(os.listdir(tmp_path)) == ["a", "b", "dataset"]
    os.rename(tmp_path / "dataset", tmp_path / "dataset.old-4242")  # a kill between the two renames of a swap
    prepare_dataset.clean_leftovers(str(tmp_path / "dataset"))
    assert dataset_files(tmp_path / "dataset") == sorted(m.file)


def test_ctrl_c_keeps_the_previous_dataset(tmp_path):
    os.makedirs(tmp_path / "dataset" / "train" / "benign")
    (tmp_path / "dataset" / "manifest.csv").write_text("previous")
    p = subprocess.Popen([sys.executable, SCRIPT, "--demo", "--demo-photo-size", "256", "--workers", "2"],
                         cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 30
    while not os.path.exists(tmp_path / "demo_data" / "metadata.csv") and time.time() < deadline:
        time.sleep(0.05)  # interrupt while the photos are being drawn
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert err.strip().splitlines()[-1] == "interrupted; the previous dataset is untouched" and "Traceback" not in err
    assert (tmp_path / "dataset" / "manifest.csv").read_text() == "previous"
    assert not glob.glob(str(tmp_path / "dataset.*"))


@pytest.mark.parametrize("rows, args, message", [
    ([{"isic_id": "ISIC_0000001", "image_type": "clinical: overview"}], [], "neither diagnosis_1 nor benign_malignant"),
    ([{"id": "ISIC_0000001", "diagnosis_1": "Benign"}], [], "no isic_id column"),
    ([{"isic_id": "ISIC_0000001", "diagnosis_1": "Indeterminate"}], [], "isic image download --search"),
    ([{"isic_id": "ISIC_0000001", "diagnosis_1": "Benign"}], ["--image-types", "overveiw"], "'clinical: overview'"),
    ([{"isic_id": "ISIC_0000001", "diagnosis_1": "Benign"}], ["--resize-to", "0"], "--resize-to must be >= 1"),
])
def test_user_mistakes_get_one_clear_line(tmp_path, rows, args, message):
    pd.DataFrame(rows).to_csv(tmp_path / "metadata.csv", index=False)
    os.makedirs(tmp_path / "isic_images")
    r = run(tmp_path, *args)
    assert r.returncode == 1 and r.stderr.startswith("error: ") and message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and not glob.glob(str(tmp_path / "dataset*"))


def test_no_export_at_all_says_how_to_download(tmp_path):
    r = run(tmp_path)
    assert r.returncode == 1
    assert "isic image download --search 'image_type:\"clinical: overview\" AND diagnosis_1:Benign'" in r.stderr
    assert "diagnosis_1:Malignant" in r.stderr and "isic_images/malignant" in r.stderr


def test_demo_export_is_isic_shaped_grouped_and_deterministic(tmp_path):
    r = run(tmp_path, "--demo", "--demo-photo-size", "256", "--workers", "2")
    assert r.returncode == 0, r.stderr
    meta = pd.read_csv(tmp_path / "demo_data" / "metadata.csv", dtype=str, keep_default_na=False)
    assert list(meta.columns) == ["isic_id", "attribution", "copyright_license", "age_approx", "anatom_site_1",
                                  "diagnosis_1", "diagnosis_2", "image_type", "lesion_id", "patient_id", "pixels_x",
                                  "pixels_y", "sex"]
    assert meta.attribution.str.startswith("SYNTHETIC").all() and meta.isic_id.str.fullmatch(r"ISIC_9\d{6}").all()
    assert {"Indeterminate", ""} <= set(meta.diagnosis_1)
    assert {"dermoscopic", "clinical: close-up"} <= set(meta.image_type)
    assert meta.lesion_id.duplicated().any() and (meta.groupby("patient_id").lesion_id.nunique() > 1).any()
    unseen = sorted(os.listdir(tmp_path / "demo_data" / "unseen"))
    assert unseen == [f"{c}_{k}.jpg" for c in ["benign", "malignant"] for k in (1, 2, 3)]
    with Image.open(tmp_path / "demo_data" / "unseen" / "benign_1.jpg") as img:
        assert img.size == (256, 192)
    digests = [hashlib.sha256((tmp_path / "demo_data" / f"{i}.jpg").read_bytes()).digest() for i in meta.isic_id]
    assert len(digests) - len(set(digests)) == 2  # two byte-identical copies under other ids
    m = pd.read_csv(tmp_path / "dataset" / "manifest.csv", dtype=str, keep_default_na=False)
    assert m.label.value_counts().to_dict() == {"benign": 200, "malignant": 200} and m.sha256.is_unique
    for col in ["lesion_id", "patient_id"]:
        assert (m.groupby(col).split.nunique() == 1).all()
    prepare_dataset.write_demo_export(str(tmp_path / "again"), 42, 256, 2)
    for name in ["metadata.csv", *meta.isic_id[:: len(meta) // 5] + ".jpg", "unseen/malignant_3.jpg"]:
        assert (tmp_path / "demo_data" / name).read_bytes() == (tmp_path / "again" / name).read_bytes(), name


@pytest.mark.skipif(not os.path.isdir(REAL_SAMPLE), reason="no ../shared/real_isic_sample (only in the dev setup)")
def test_real_isic_sample(tmp_path):
    r = run(tmp_path, "--metadata-csv", os.path.join(REAL_SAMPLE, "metadata.csv"), "--images-dir", REAL_SAMPLE,
            "--image-types", "dermoscopic", "--n-per-class", "30", "--workers", "2")
    assert r.returncode == 0, r.stderr
    m = pd.read_csv(tmp_path / "dataset" / "manifest.csv")
    assert m.label.value_counts().to_dict() == {"benign": 30, "malignant": 30}
    assert all(0.1 <= (m.split == s).mean() <= 0.2 for s in ["val", "test"])
    assert dataset_files(tmp_path / "dataset") == sorted(m.file)
