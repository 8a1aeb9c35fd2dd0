"""skinlesion/dataset.py: the prepared dataset's layout (one folder per class, checked with one line) and its
classes as the manifest names them (benign ones first; benign and malignant for a folder made by hand)."""

import os
import shutil

import pandas as pd
import pytest

from conftest import fails, lesion_photo
from skinlesion import dataset, model_file


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing", "data folder {d} not found; make it with 'python prepare_dataset.py'"),
        ("no malignant", "{d} has no malignant/; it must hold exactly one folder per class, benign/ and malignant/"),
        ("extra folder", "{d} has the extra .ipynb_checkpoints/; it must hold exactly one folder per class"),
        ("empty class", "{d}: no images in malignant/; both classes are needed"),
    ],
)
def test_one_class_folder_layout_check(tmp_path, capsys, case, expected):
    d = tmp_path / "test"
    if case != "missing":
        lesion_photo(d / "benign" / "a.jpg")
        os.makedirs(d / "malignant")
        (d / "malignant" / "readme.txt").write_text("no photos here")
    if case == "no malignant":
        shutil.rmtree(d / "malignant")
    if case == "extra folder":
        lesion_photo(d / "malignant" / "b.jpg")
        lesion_photo(d / ".ipynb_checkpoints" / "c.jpg")
    fails(capsys, expected.format(d=d), dataset.class_folders, str(d))


def test_class_folders_of_lesion_types(tmp_path, capsys):
    classes = ["nevus", "melanoma", "bcc"]
    for k, c in enumerate(classes):
        lesion_photo(tmp_path / c / f"ISIC_{k}.jpg", seed=k)
    (tmp_path / "nevus" / "notes.txt").write_text("a note")
    found, others = dataset.class_folders(str(tmp_path), "test split", classes)
    assert {c: [os.path.basename(p) for p in found[c]] for c in found} == {
        "nevus": ["ISIC_0.jpg"],
        "melanoma": ["ISIC_1.jpg"],
        "bcc": ["ISIC_2.jpg"],
    }
    assert [os.path.basename(f) for f, _ in others] == ["notes.txt"]
    fails(
        capsys,
        f"{tmp_path} has no scc/; it must hold exactly one folder per class, nevus/ and melanoma/ and bcc/ and scc/",
        dataset.class_folders,
        str(tmp_path),
        "test split",
        [*classes, "scc"],
    )
    os.remove(tmp_path / "bcc" / "ISIC_2.jpg")
    fails(
        capsys,
        f"{tmp_path}: no images in bcc/; every class is needed",
        dataset.class_folders,
        str(tmp_path),
        "test split",
        classes,
    )
    fails(
        capsys,
        f"test split {tmp_path / 'nope'} not found",
        dataset.class_folders,
        str(tmp_path / "nope"),
        "test split",
        classes,
    )


def test_classes_without_a_side_column_are_benign_and_malignant(tmp_path):
    two = (["benign", "malignant"], ["malignant"], {"benign": "benign", "malignant": "malignant"})
    assert dataset.classes_of(None) == two
    assert dataset.read_manifest(str(tmp_path)) is None  # a folder made by hand
    pd.DataFrame({"isic_id": ["ISIC_0000001"], "split": ["train"], "label": ["malignant"]}).to_csv(
        tmp_path / "manifest.csv", index=False
    )
    manifest = dataset.read_manifest(str(tmp_path))
    assert manifest.isic_id.tolist() == ["ISIC_0000001"] and dataset.classes_of(manifest) == two
    assert dataset.classes_of(pd.DataFrame(columns=["isic_id", "label", "side"])) == two  # empty


def test_classes_of_lesion_types_list_benign_ones_first():
    manifest = pd.DataFrame(
        {
            "label": ["melanoma", "nevus", "bcc", "seborrheic_keratosis", "nevus", "melanoma"],
            "side": ["malignant", "benign", "malignant", "benign", "benign", "malignant"],
            "label_value": [
                "Melanoma, NOS",
                "Nevus",
                "Basal cell carcinoma",
                "Seborrheic keratosis",
                "Nevus",
                "Melanoma, NOS",
            ],
        }
    )
    classes, malignant, values = dataset.classes_of(manifest)
    assert classes == ["nevus", "seborrheic_keratosis", "bcc", "melanoma"]
    assert malignant == ["bcc", "melanoma"]
    assert values == {
        "nevus": "Nevus",
        "seborrheic_keratosis": "Seborrheic keratosis",
        "bcc": "Basal cell carcinoma",
        "melanoma": "Melanoma, NOS",
    }
    _, _, values = dataset.classes_of(manifest.drop(columns="label_value"))
    assert values == {"nevus": "benign", "seborrheic_keratosis": "benign", "bcc": "malignant", "melanoma": "malignant"}


@pytest.mark.parametrize(
    "case, expected",
    [
        ("a folder", "manifest.csv is a folder, not a manifest; re-run prepare_dataset.py, or remove it"),
        ("a link to nothing", "manifest.csv is a link to nothing, not a manifest"),
        ("a named pipe", "manifest.csv is a named pipe, not a manifest"),
        ("not UTF-8", "manifest.csv (UnicodeDecodeError: 'utf-8' codec can't decode byte 0xff"),
        ("empty", "cannot read {data}/manifest.csv (EmptyDataError: No columns to parse from file); re-run"),
        ("not a CSV", "cannot read {data}/manifest.csv (ParserError: Error tokenizing data."),
    ],
)
def test_a_manifest_that_cannot_be_read_is_one_line_not_ignored(tmp_path, capsys, case, expected):
    """Ignored, it left the card saying the licence was unknown (the export's CC-BY-NC dropped out silently).
    No manifest at all (a folder made by hand) is still none, and a readable one is read."""
    data, path = tmp_path / "data", tmp_path / "data" / "manifest.csv"
    data.mkdir()
    assert dataset.read_manifest(str(data)) is None
    path.write_text("isic_id,split,label,copyright_license\nISIC_0000001,train,benign,CC-BY-NC\n")
    assert dataset.read_manifest(str(data)).copyright_license.tolist() == ["CC-BY-NC"]
    path.unlink()
    if case == "a folder":
        path.mkdir()
    elif case == "a link to nothing":
        os.symlink("gone.csv", path)
    elif case == "a named pipe":
        os.mkfifo(path)  # reading it would wait for ever
    elif case == "not UTF-8":
        path.write_bytes(b"isic_id,split\n\xff\xfe,train\n")
    elif case == "empty":
        path.write_bytes(b"")
    else:
        path.write_text('isic_id,split\nISIC_1,train,x,y\n"unclosed\n')
    _, err = fails(capsys, expected.format(data=data), dataset.read_manifest, str(data))
    assert err.count("\n") == 1, err


def test_the_data_summary_holds_text_a_model_file_accepts():
    """Metadata values with terminal escapes, newlines, a right-to-left override or 600 characters become
    printable, bounded text (as messages.printable shows them), so the model file that carries them loads; empty
    values read unknown; accents are kept."""
    from skinlesion import schema

    forged = ["Dr \x1b[2J", "Clinic\nB", "x" * 600, "Hôpital \u202eA", ""]
    manifest = pd.DataFrame(
        dict(
            isic_id=[f"ISIC_{i:07d}" for i in range(5)],
            split=["train", "train", "val", "val", "train\n"],
            label=["benign", "malignant"] * 2 + ["benign"],
            attribution=forged,
            copyright_license=forged,
            sex=forged,
            label_column="diagnosis\t3",
        )  # fmt: skip
    )
    data = dataset.data_summary(manifest, dataset.SIDES, "data\x1bset")

    assert model_file.KEYS["data"].shape.test(data) is None
    assert set(data["attributions"]) == {
        "Dr \\x1b[2J",
        "Clinic\\nB",
        "x" * schema.MAX_TEXT,
        "Hôpital \\u202eA",
        "unknown",
    }
    assert data["source"] == "data\\x1bset" and data["label_column"] == "diagnosis\\t3" and "train\\n" in data["counts"]
    assert set(data["factors"]["sex"]["train"]) == {"Dr \\x1b[2J", "Clinic\\nB"}
    assert data["factors"]["sex"]["train\\n"] == {"unknown": 1}


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"\0" * 1000, "manifest.csv holds binary data, not CSV text; re-run prepare_dataset.py"),
        (b"isic_id,label\nISIC_0000001,benign\n", "manifest.csv has no split column (its columns: isic_id, label)"),
        (b"isic_id,Split,label\n", "manifest.csv has no split column (its columns: isic_id, Split, label)"),
    ],
    ids=["zero bytes", "no split column", "Split"],
)
def test_a_binary_manifest_or_one_without_its_split_column_is_one_line(tmp_path, capsys, content, expected):
    """Zero bytes were read as an empty table (ignored: the card said the licences were unknown); a manifest
    without its split column was a KeyError later. The nearest accepted: the columns every manifest holds."""
    (tmp_path / "manifest.csv").write_bytes(content)
    fails(capsys, expected, dataset.read_manifest, str(tmp_path))
    (tmp_path / "manifest.csv").write_bytes(b"isic_id,split,label\nISIC_0000001,train,benign\n")
    assert dataset.read_manifest(str(tmp_path)).split.tolist() == ["train"]
