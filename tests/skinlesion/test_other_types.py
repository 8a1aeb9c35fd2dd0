"""The photos of another kind that prepare_dataset.py keeps for the familiarity check (skinlesion/other_types.py):
only image types of another modality, within the bound shared by the types, readable ones, decoded and shrunk; and
reading them back, by type, within a bound."""

import os

from PIL import Image

from conftest import write_export
from skinlesion import isic, other_types


def export(folder):
    """An export of clinical overview photos (one under its name before July 2023) and photos of other types: 4
    dermoscopic (one without its image file), 3 TBP tiles, 4 clinical close-ups (the same kind as overviews)."""
    kinds = [("clinical: overview", "Benign")] * 5 + [("overview", "Malignant")] + [("dermoscopic", "")] * 2
    kinds += [("dermoscopic", "Indeterminate"), ("dermoscopic", "Malignant")] + [("TBP tile: close-up", "")] * 3
    kinds += [("clinical: close-up", "Benign")] * 4
    rows = [dict(isic_id=f"ISIC_00000{n:02d}", image_type=t, diagnosis_1=label) for n, (t, label) in enumerate(kinds)]
    write_export(folder, rows, size=(120, 90))
    os.remove(os.path.join(folder, "ISIC_0000009.jpg"))  # listed, not downloaded
    return isic.read_metadata([os.path.join(folder, "metadata.csv")], ["isic_id", "image_type", "diagnosis_1"])


def keep(rows, folder, out, most):
    os.makedirs(out, exist_ok=True)
    return other_types.keep(rows, ["clinical: overview"], most, str(folder), str(out), lambda path: False, 0, 64, 1)


def test_it_keeps_another_modality_within_the_bound_and_reads_it_back_by_type(tmp_path):
    rows = export(tmp_path / "export")
    note = keep(rows, tmp_path / "export", tmp_path / "all", 100)
    kept = sorted(os.listdir(tmp_path / "all" / other_types.FOLDER))
    assert [name.split(".")[0] for name in kept] == ["dermoscopic"] * 3 + ["tbp_tile_close_up"] * 3  # no close-up
    assert note == (
        "kept 6 photos of another kind in other_types/ for the familiarity check: dermoscopic 3, tbp_tile_close_up 3"
    )
    assert os.listdir(tmp_path / "all") == [other_types.FOLDER]  # nothing else left where it decoded
    with Image.open(tmp_path / "all" / other_types.FOLDER / kept[0]) as img:
        assert min(img.size) == 64  # shrunk as prepare shrinks
    found = other_types.photos_of(str(tmp_path / "all"), 100)
    assert {k: len(v) for k, v in found.items()} == {"dermoscopic": 3, "tbp_tile_close_up": 3}
    assert sum(len(v) for v in other_types.photos_of(str(tmp_path / "all"), 4).values()) == 4

    note = keep(rows, tmp_path / "export", tmp_path / "five", 5)  # the bound: shares of 3 rounded up, 5 kept
    kept = os.listdir(tmp_path / "five" / other_types.FOLDER)
    assert len(kept) == 5 and note.startswith("kept 5 photos") and len(os.listdir(tmp_path / "five")) == 1


def test_without_another_kind_it_keeps_nothing_and_says_so(tmp_path):
    rows = export(tmp_path / "export")
    rows = rows[rows.image_type.map(other_types.modality) == "clinical"]
    note = keep(rows, tmp_path / "export", tmp_path / "out", 100)
    assert note.startswith("note: no photo of another kind") and os.listdir(tmp_path / "out") == []
    assert other_types.photos_of(str(tmp_path / "out"), 100) == {}


def test_a_file_named_otherwise_counts_as_other_and_modalities_cover_the_names_before_july_2023(tmp_path):
    os.makedirs(tmp_path / other_types.FOLDER)
    for name in ("dermoscopic.ISIC_0000001.jpg", "Odd Name.ISIC_0000002.jpg", "ISIC_0000003.jpg"):
        Image.new("RGB", (20, 20)).save(tmp_path / other_types.FOLDER / name)
    found = other_types.photos_of(str(tmp_path), 10)
    assert {k: len(v) for k, v in found.items()} == {"dermoscopic": 1, "other": 2}
    kinds = {t: other_types.modality(t) for t in ["clinical: overview", "overview", "clinical", "clinical: close-up",
                                                  "dermoscopic", "TBP tile: overview", "RCM: mosaic"]}  # fmt: skip
    assert set(kinds.values()) == {"clinical", "dermoscopic", "TBP tile", "RCM"}
    assert kinds["overview"] == kinds["clinical"] == "clinical"
