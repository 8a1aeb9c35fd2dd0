"""skinlesion/isic.py: an ISIC export's vocabularies and columns: the side of a row (both label schemas, any
case, never guessed), ISIC's words for 'not decided', age bands, the factors of a model card (missing columns
read as unknown), and the credits (attribution.txt, licenses/) that travel with the photos."""

import os

import pandas as pd
import pytest

from conftest import alarm, fails
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
