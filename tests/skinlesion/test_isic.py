"""skinlesion/isic.py: an ISIC export's vocabularies and columns: the side of a row (both label schemas, any
case, never guessed), ISIC's words for 'not decided', age bands, the factors of a model card (missing columns
read as unknown), and the credits (attribution.txt, licenses/) that travel with the photos.
The balanced sample of an export's photos: n_per_class readable, distinct photos per class
(fewer where a class has fewer), unreadable and duplicate ones counted, only what is chosen left in the output
folder, shrunk once; the progress bar's total is known at once and never changes.
The splits: photos of one lesion or one patient land in one split (union-find groups), every split
has every class or the run stops with one line naming the class."""

import os
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import alarm, fails, noise_image
from skinlesion import isic


def test_labels_ignore_case_and_spaces_in_both_columns():
    legacy = pd.DataFrame(
        {
            "benign_malignant": [
                "benign",
                " MALIGNANT ",
                "Malignant",
                "indeterminate",
                "indeterminate/benign",
                "Indeterminate/Malignant",
                "",
                "naevus",
            ]
        }
    )
    assert list(isic.sides(legacy)) == [
        "benign",
        "malignant",
        "malignant",
        "'indeterminate'",
        "'indeterminate/benign'",
        "'Indeterminate/Malignant'",
        "empty",
        "'naevus'",
    ]
    both = pd.DataFrame(
        {
            "diagnosis_1": ["Benign", "malignant ", "", "Benign", "Indeterminate", "MALIGNANT", "Benign"],
            "benign_malignant": [
                "benign",
                "Malignant",
                "malignant",
                "",
                "indeterminate",
                "benign",
                "indeterminate/benign",
            ],
        }
    )
    assert list(isic.sides(both)) == [
        "benign",
        "malignant",
        "malignant",
        "benign",
        "'Indeterminate'",
        "conflicting",
        "conflicting",
    ]


def test_no_label_column_is_one_line(capsys):
    rows = pd.DataFrame({"isic_id": ["ISIC_0000001"], "diagnosis_3": ["Nevus"]})
    fails(capsys, "the metadata has neither diagnosis_1 nor", isic.sides, rows)


def test_undecided_sides_are_isics_words_for_not_decided():
    side = isic.sides(
        pd.DataFrame(
            {
                "diagnosis_1": [
                    "Indeterminate",
                    "indeterminate/benign",
                    "Indeterminate/Malignant",
                    "",
                    "Benign",
                    "naevus",
                    "Malignant",
                ],
                "benign_malignant": [""] * 6 + ["benign"],
            }
        )
    )
    # an empty label counts as not decided; a conflicting one does not
    assert list(isic.is_undecided(side)) == [True, True, True, True, False, False, False]


@pytest.mark.parametrize(
    "value, band",
    [
        ("35", "30-49"),
        ("0", "0-29"),
        ("29.9", "0-29"),
        ("30", "30-49"),
        ("50", "50-69"),
        ("70", "70+"),
        ("85.0", "70+"),
        (45, "30-49"),
        ("", ""),
        ("unknown", ""),
        (None, ""),
        ("-5", ""),
    ],
)
def test_age_band(value, band):
    assert isic.age_band(value) == band


def test_factor_values_take_the_body_site_from_the_newer_column_and_read_missing_ones_as_unknown():
    rows = pd.DataFrame(
        {
            "anatom_site_1": ["head", "", "trunk"],
            "anatom_site_general": ["x", "y", "z"],
            "sex": ["female", "male", " male "],
            "age_approx": ["35", "", "80"],
        }
    )
    values = isic.factor_values(rows)
    assert set(values) == set(isic.FACTORS)
    assert list(values["body site"]) == ["head", "", "trunk"]
    assert list(values["sex"]) == ["female", "male", "male"] and list(values["age band"]) == ["30-49", "", "70+"]
    assert list(values["skin type"]) == ["", "", ""] and list(values["image type"]) == ["", "", ""]
    before_2026 = isic.factor_values(rows.assign(anatom_site_1=""))
    assert list(before_2026["body site"]) == ["x", "y", "z"]
    assert list(isic.factor_values(rows.drop(columns="anatom_site_1"))["body site"]) == ["x", "y", "z"]
    assert list(isic.factor_values(rows.drop(columns=["anatom_site_1", "anatom_site_general"]))["body site"]) == [
        "",
        "",
        "",
    ]


def test_factor_counts_say_unknown():
    rows = pd.DataFrame({"sex": ["male", "", "female", "male"], "split": ["train", "train", "val", "val"]})
    counts = isic.factor_counts(rows, "split")
    assert counts["sex"] == {"train": {"male": 1, "unknown": 1}, "val": {"female": 1, "male": 1}}
    assert counts["skin type"] == {"train": {"unknown": 2}, "val": {"unknown": 2}}


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return str(path)


def test_the_search_for_metadata_follows_links_only_inside_the_export_and_each_folder_once(tmp_path):
    """Two loops of links (one to the export itself, one back up from a download) used to hang the search, or list
    the same metadata.csv 41 times; a link out of the export is not followed; a link that stays inside is."""
    export = tmp_path / "export"
    a = write(export / "a" / "metadata.csv", "isic_id\n")
    b = write(tmp_path / "b" / "metadata.csv", "isic_id\n")  # a download kept outside, linked in
    c = write(tmp_path / "shared" / "c" / "metadata.csv", "isic_id\n")
    os.symlink(".", export / "loop")
    os.symlink("..", export / "a" / "up")
    os.symlink(tmp_path / "b", export / "b")
    os.symlink("/", export / "root")
    os.symlink("a", export / "again")
    with alarm(30, "the search for metadata.csv did not finish in 30 s"):
        assert isic.metadata_files(str(export / "metadata.csv"), str(export)) == [a]
        assert isic.metadata_files(str(tmp_path / "shared" / "metadata.csv"), str(tmp_path / "shared")) == [c]
    assert b not in isic.metadata_files(str(export / "none.csv"), str(export))


def test_copy_credits_merges_every_downloads_attribution_and_licences(tmp_path):
    a = write(tmp_path / "export" / "a" / "metadata.csv", "isic_id\n")
    b = write(tmp_path / "export" / "b" / "metadata.csv", "isic_id\n")
    write(tmp_path / "export" / "a" / "attribution.txt", "Alice Archive\n\nBob Hospital\n")
    write(tmp_path / "export" / "b" / "attribution.txt", "Bob Hospital\n\nCarol Clinic")
    write(tmp_path / "export" / "a" / "licenses" / "CC-BY.txt", "CC-BY from a")
    write(tmp_path / "export" / "b" / "licenses" / "CC-BY.txt", "CC-BY from b")
    write(tmp_path / "export" / "b" / "licenses" / "CC-0.txt", "CC-0")
    write(tmp_path / "export" / "b" / "licenses" / "README.md", "not a licence")
    (tmp_path / "out").mkdir()
    said = isic.copy_credits([b, a, a], pd.DataFrame({"attribution": ["ignored"]}), str(tmp_path / "out"))
    assert said == "attribution.txt (3 attributions) and licenses/ (CC-BY.txt, CC-0.txt) copied"
    assert (tmp_path / "out" / "attribution.txt").read_text() == "Alice Archive\n\nBob Hospital\n\nCarol Clinic\n"
    assert sorted(os.listdir(tmp_path / "out" / "licenses")) == ["CC-0.txt", "CC-BY.txt"]
    assert (tmp_path / "out" / "licenses" / "CC-BY.txt").read_text() == "CC-BY from a"


def test_copy_credits_writes_an_attribution_from_the_column_when_the_export_has_none(tmp_path):
    metadata = write(tmp_path / "export" / "metadata.csv", "isic_id\n")
    rows = pd.DataFrame({"attribution": ["Alice Archive", "", "Alice Archive", "Bob Hospital"]})
    (tmp_path / "out").mkdir()
    said = isic.copy_credits([metadata], rows, str(tmp_path / "out"))
    assert said == "no attribution.txt in the export: written from its attribution column (3 attributions)"
    text = (tmp_path / "out" / "attribution.txt").read_text()
    expected = ["Alice Archive", "Bob Hospital", "unknown (no attribution in the export)"]
    assert text.endswith("\n") and sorted(text.strip().split("\n\n")) == expected
    assert os.listdir(tmp_path / "out" / "licenses") == []


# ---------------------------------------------------------------------------- sampling
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

    class Recording(isic.tqdm):
        def __setattr__(self, name, value):
            if name == "total":
                records["totals"].append(value)
            super().__setattr__(name, value)

        def update(self, n=1):
            records["steps"].append(n)
            return super().update(n)

    monkeypatch.setattr(isic, "tqdm", Recording)
    return records


@pytest.mark.parametrize("workers", [1, 2])
def test_decode_balanced_takes_distinct_readable_photos_and_counts_the_rest(tmp_path, bar_records, workers):
    cands = candidates(str(tmp_path / "export"))
    (tmp_path / "out").mkdir()
    chosen, unreadable, duplicates = isic.decode_balanced(cands, 7, 0, str(tmp_path / "out"), 32, workers)
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
    chosen, unreadable, duplicates = isic.decode_balanced(cands, 2, 1, str(tmp_path / "out"), None, 1)
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
        chosen, unreadable, duplicates = isic.decode_balanced(cands, 4, seed, str(out), 32, 1)
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
    thin = isic.process_image(("ISIC_0000001", str(tmp_path / "ISIC_0000001.png"), str(tmp_path / "out"), 32))
    assert thin == dict(isic_id="ISIC_0000001", error="one side over 10 times the other")
    ten = isic.process_image(("ISIC_0000002", str(tmp_path / "ISIC_0000002.png"), str(tmp_path / "out"), 32))
    assert ten["error"] == "" and os.listdir(tmp_path / "out") == ["ISIC_0000002.jpg"]


# ---------------------------------------------------------------------------- splits
def test_union_find_groups_lesions_and_patients():
    df = pd.DataFrame(
        {
            "isic_id": ["ISIC_1", "ISIC_2", "ISIC_3", "ISIC_4", "ISIC_5", "ISIC_6"],
            "lesion_id": ["IL_1", "IL_1", "IL_2", "", "", "IL_3"],
            "patient_id": ["", "IP_1", "IP_1", "IP_1", "", ""],
        }
    )
    groups = list(isic.group_ids(df))
    assert len(set(groups[:4])) == 1  # linked through IL_1 and IP_1
    assert len(set(groups)) == 3


def labels_and_groups(counts, views=2):
    """labels (numpy strings) and groups: counts[c] lesions of class c, views photos each."""
    labels = np.array([c for c, n in counts.items() for _ in range(n * views)])
    groups = np.array([f"{c}-{i // views}" for c, n in counts.items() for i in range(n * views)])
    return labels, groups


def test_split_groups_keeps_groups_together_and_every_class_in_every_split():
    labels, groups = labels_and_groups({"benign": 60, "malignant": 30, "melanoma": 12})
    split = isic.split_groups(labels, groups, 0.15, 0.15, seed=0)
    assert set(split) == {"train", "val", "test"}
    for s in ["train", "val", "test"]:
        assert set(labels[split == s]) == {"benign", "malignant", "melanoma"}, s
    assert all(len(set(split[groups == g])) == 1 for g in set(groups))  # a lesion's photos stay together
    assert 0.2 < np.mean(split != "train") < 0.4
    assert np.array_equal(split, isic.split_groups(labels, groups, 0.15, 0.15, seed=0))  # seeded
    assert list(isic.split_groups(labels, groups, 0, 0, seed=0)) == ["train"] * len(labels)


def test_a_class_too_rare_for_every_split_is_one_line_naming_it(capsys):
    labels, groups = labels_and_groups({"benign": 40, "malignant": 40, "melanoma": 2})
    expected = (
        "split would have no melanoma images: the 4 melanoma images are only 2 groups; add melanoma images, or "
        "lower --val-fraction/--test-fraction"
    )
    fails(capsys, expected, isic.split_groups, labels, groups, 0.15, 0.15, seed=0)


def test_too_few_groups_for_val_and_test_is_one_line(capsys):
    labels, groups = labels_and_groups({"benign": 1, "malignant": 1}, views=3)
    fails(capsys, "only 2 lesion/patient groups, too few", isic.split_groups, labels, groups, 0.15, 0.15, seed=0)


def test_a_column_there_twice_is_read_once_when_its_copies_agree_and_refused_when_they_disagree(tmp_path, capsys):
    """Two diagnosis_1 columns (an export merged by hand): the second was ignored silently, whatever it said."""
    path = tmp_path / "metadata.csv"
    path.write_text(
        "isic_id,diagnosis_1,image_type,diagnosis_1\n"
        "ISIC_0000001,Benign,dermoscopic,Benign\n"
        "ISIC_0000002,Malignant,dermoscopic,Benign\n"
        "ISIC_0000003,Benign,dermoscopic, Benign\n"
    )
    expected = (
        f"{path} has 2 diagnosis_1 columns, which disagree on 1 row(s) (ISIC_0000002); keep the one that is right"
    )
    fails(capsys, expected, isic.read_metadata, [str(path)], ["isic_id", "diagnosis_1"])
    path.write_text(path.read_text().replace("ISIC_0000002,Malignant", "ISIC_0000002,Benign"))
    table = isic.read_metadata([str(path)], ["isic_id", "diagnosis_1"])  # the nearest accepted: copies that agree
    assert list(table.columns) == ["isic_id", "diagnosis_1"] and table.diagnosis_1.tolist() == ["Benign"] * 3
    assert f"warning: {path} has 2 diagnosis_1 columns, with the same values: read once" in capsys.readouterr().err
    path.write_text("isic_id,image_type,image_type\nISIC_0000001,a,b\n")  # a column not asked for: not looked at
    assert list(isic.read_metadata([str(path)], ["isic_id", "diagnosis_1"]).columns) == ["isic_id"]
