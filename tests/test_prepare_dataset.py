"""prepare_dataset.py: exports shaped like real ISIC ones (both label schemas, what Excel does to a CSV), the
demo export prepared, bad rows and bad images (counted), runs that must stop with one `error:` line
and leave the previous dataset/ byte-identical (bad flags, a lost class, far fewer rows, a full disk, a second
run in the folder), kills and Ctrl-C, and the real sample in ../shared when it is there.

prepare_dataset.main runs in this process where an exit code is all that is needed; a fresh process only for
signals, a file-size limit and a hang guard."""

import glob
import hashlib
import os
import pathlib
import signal

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import conftest
import prepare_dataset
from conftest import (
    ROOT,
    alarm,
    assert_one_error,
    dead_run,
    export_rows,
    fingerprint,
    finish,
    main_fails,
    mark_made,
    marked_folder,
    noise_image,
    png_claiming,
    run,
    write_export,
)
from skinlesion import folders, isic, ledger, other_types, photos

REAL_SAMPLE = next(
    (
        p
        for p in ("/work/shared/real_isic_sample", os.path.join(ROOT, "..", "shared", "real_isic_sample"))
        if os.path.isdir(p)
    ),
    None,
)

pytestmark = pytest.mark.usefixtures("in_tmp")  # every test in its own folder, where the defaults point


@pytest.fixture
def no_hang():
    """Fail, instead of waiting forever, if something opens a named pipe in this process."""
    with alarm(60, "blocked: a named pipe was opened"):
        yield


def lesion_rows(n_lesions, start=0):
    """1-3 views per lesion, two lesions per patient (one of each class)."""
    rows = []
    for lesion in range(n_lesions):
        for _view in range(1 + lesion % 3):
            rows.append(
                {
                    "isic_id": f"ISIC_{start + len(rows):07d}",
                    "diagnosis_1": ["Benign", "Malignant"][lesion % 2],
                    "image_type": "clinical: overview",
                    "lesion_id": f"IL_{start + lesion:07d}",
                    "patient_id": f"IP_{start + lesion // 2:07d}",
                }
            )
    return rows


def previous_dataset():
    """A dataset/ as an earlier run left it; returns its fingerprint."""
    noise_image(os.path.join("dataset", "train", "benign", "ISIC_0999999.jpg"), 99)
    with open(os.path.join("dataset", "manifest.csv"), "w") as f:
        f.write("isic_id,split,label\nISIC_0999999,train,benign\n")
    mark_made("dataset")
    return fingerprint("dataset")


def prepare(*args, workers=1):
    """prepare_dataset.main in this process; returns the manifest."""
    prepare_dataset.main(["--workers", str(workers), *map(str, args)])
    return pd.read_csv(os.path.join("dataset", "manifest.csv"), dtype=str, keep_default_na=False)


def dataset_files(folder="dataset"):
    return sorted(os.path.relpath(p, folder) for p in glob.glob(os.path.join(folder, "*", "*", "*")))


def summary(out):
    """{step: the rows left and what was left out} from the summary prepare_dataset.py prints."""
    return {line[:46].strip(): line[46:] for line in out.splitlines() if line.startswith("  ")}


def assert_grouped(m, *columns):
    """The photos sharing a value of each column (lesion_id, patient_id) are all in one split."""
    for col in columns:
        assert (m.groupby(col).split.nunique() == 1).all(), f"a {col} spans two splits"


def fails_keeping_dataset(argv, capsys, expected, before):
    """main(argv) stops with one error line; dataset/ is byte-identical and no dataset.tmp/old is left."""
    main_fails(prepare_dataset.main, ["--workers", 1, *argv], capsys, expected)
    assert fingerprint("dataset") == before
    assert glob.glob("dataset*") == ["dataset"]


# ---------------------------------------------------------------------------- rows and labels
def test_filters_image_types_labels_ids_and_repeated_rows():
    df = pd.DataFrame(
        {
            "isic_id": [
                "ISIC_0000001",
                "ISIC_0000002",
                "ISIC_0000003",
                "ISIC_0000004",
                "ISIC_0000005",
                "ISIC_0000006",
                "ISIC_0000007",
                "ISIC_0000008",
                "../../x",
                "/etc/passwd",
                "ISIC_0000001",
                "ISIC_123",
            ],
            "diagnosis_1": [
                "Benign",
                "Malignant",
                "Benign",
                "Malignant",
                "Indeterminate",
                "",
                " benign ",
                "Malignant",
                "Benign",
                "Benign",
                "Benign",
                "Melanoma",
            ],
            "image_type": [
                "clinical: overview",
                "overview",
                "dermoscopic",
                "clinical: close-up",
                "clinical: overview",
                "clinical: overview",
                "clinical: overview",
                "TBP tile: close-up",
            ]
            + ["clinical: overview"] * 4,
        }
    )
    kept, typed, steps, losses = prepare_dataset.filter_rows(df, ["clinical: overview"])
    assert list(kept.isic_id) == ["ISIC_0000001", "ISIC_0000002", "ISIC_0000007"]  # 'overview': the pre-2023 name
    assert list(kept.side) == ["benign", "malignant", "benign"] and len(typed) == 9
    assert [n for _, n, _ in steps] == [12, 9, 6, 4, 4, 3]
    why = {step: reason for step, _, reason in steps}
    assert "dermoscopic 1" in why["image_type clinical: overview or overview"]
    definite = why["with a definite benign/malignant side"]
    assert "'Indeterminate' 1" in definite and "empty 1" in definite
    assert "'../../x'" in why["with a valid isic_id"] and "1 repeated" in why["unique isic_id"]
    # Indeterminate and empty are ISIC's own words: expected; 'Melanoma' and bad ids are not
    assert [(cause, n) for cause, n, _ in losses] == [
        ("label outside ISIC's vocabulary or in conflict", 1),
        ("invalid isic_id", 2),
        ("isic_id listed with different labels", 0),
    ]
    assert "'Melanoma' 1" in losses[0][2]


# ---------------------------------------------------------------------------- exports that work
def test_grouped_balanced_split_from_two_downloads(capsys):
    # one 'isic image download' per class into sub-folders, each with its own metadata.csv; no top-level one
    rows = lesion_rows(40)
    for c in ["Benign", "Malignant"]:
        write_export(f"isic_images/{c.lower()}", [r for r in rows if r["diagnosis_1"] == c])
    for r in rows:  # write_export seeds its photos by row number: the two folders would share photos
        noise_image(f"isic_images/{r['diagnosis_1'].lower()}/{r['isic_id']}.jpg", int(r["isic_id"][5:]))
    # loops of links hung the search for metadata.csv (or read one 41 times); links out of the export are not read
    write_export("elsewhere", export_rows(4))
    os.symlink(".", "isic_images/loop")
    os.symlink("..", "isic_images/benign/up")
    os.symlink(os.path.abspath("elsewhere"), "isic_images/elsewhere")
    os.symlink("/", "isic_images/root")
    with alarm(120, "the search for metadata.csv did not finish"):
        m = prepare("--n-per-class", 25, workers=2)
    out = capsys.readouterr().out
    listed = "isic_images/benign/metadata.csv, isic_images/malignant/metadata.csv\n"
    assert "reading the 2 metadata.csv under isic_images: " + listed in out  # each once, none from outside
    assert "train" in out and "total" in out  # summary and crosstab
    assert (m.label.value_counts() == 25).all()
    assert_grouped(m, "lesion_id", "patient_id")
    assert set(m.split) == {"train", "val", "test"} and dataset_files() == sorted(m.file)
    assert m.source_file.map(os.path.isfile).all() and (m.width == "48").all()
    with open(m.source_file[0], "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == m.sha256[0]
    assert prepare("--n-per-class", 25).equals(m)  # the same seed, 1 worker instead of 2: the same dataset


def test_legacy_schema_any_case_png_fewer_than_asked_and_no_val(capsys):
    labels = ["benign", " Benign", "BENIGN "] * 4 + ["Malignant", "malignant "] * 2
    rows = [{"isic_id": f"ISIC_{i:07d}", "benign_malignant": label} for i, label in enumerate(labels)]
    rows += [{"isic_id": f"ISIC_{99 + i:07d}", "benign_malignant": "indeterminate/malignant"} for i in range(30)]
    write_export("export", rows, ext=".png")  # 30 indeterminate of 46 rows: an expected loss, no stop
    m = prepare(
        "--metadata-csv",
        "export/metadata.csv",
        "--images-dir",
        "export",
        "--n-per-class",
        10,
        "--val-fraction",
        0,
        "--test-fraction",
        0.25,
    )
    out, err = capsys.readouterr()
    assert "no image_type column" in out and "no lesion_id column" in out
    assert "'indeterminate/malignant' 30" in out
    assert m.label.value_counts().to_dict() == {"benign": 10, "malignant": 4}
    assert "only 4 usable malignant images" in err
    assert set(m.split) == {"train", "test"} and not os.path.exists("dataset/val")
    assert m.source_file.str.endswith(".png").all() and m.file.str.endswith(".jpg").all()


@pytest.mark.parametrize(
    "sep, encoding, warning",
    [
        (";", "cp1252", "is text with semicolons between fields"),
        ("\t", "utf-8", "is text with tabs between fields"),
        ("\t", "utf-16", "is UTF-16 text with tabs between fields"),  # Excel's 'Unicode Text'
        (";", "utf-8-sig", "is text with semicolons between fields"),
    ],
    ids=["semicolons cp1252", "tabs", "utf-16 unicode text", "semicolons utf-8 bom"],
)
def test_what_excel_saves_is_read_with_a_warning(capsys, sep, encoding, warning):
    rows = export_rows(8, attribution="Dr. Müller; Universitätsklinik")
    write_export("isic_images", rows)
    pd.DataFrame(rows).to_csv("isic_images/metadata.csv", sep=sep, encoding=encoding, index=False)
    m = prepare("--val-fraction", 0, "--test-fraction", 0)
    err = capsys.readouterr().err
    assert f"warning: isic_images/metadata.csv {warning} (as Excel saves it); read it so" in err
    assert ("is not UTF-8; read it as Windows-1252" in err) == (encoding == "cp1252")
    assert sorted(m.isic_id) == [r["isic_id"] for r in rows]


def test_exif_orientation_resize_and_never_upscale():
    write_export(
        "isic_images",
        [{"isic_id": "ISIC_0000001", "diagnosis_1": "Benign"}, {"isic_id": "ISIC_0000002", "diagnosis_1": "Malignant"}],
    )
    wide = np.zeros((40, 80, 3), np.uint8)
    wide[:, :40] = (255, 0, 0)  # left half red, right half blue, as stored
    wide[:, 40:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    Image.fromarray(wide).save("isic_images/ISIC_0000001.jpg", exif=exif)
    no_split = ["--val-fraction", 0, "--test-fraction", 0]
    m = prepare("--resize-to", 20, *no_split).set_index("isic_id")
    with Image.open(os.path.join("dataset", m.file["ISIC_0000001"])) as img:
        assert img.size == (20, 40)  # upright, shorter side 20
        top, bottom = np.asarray(img)[3, 10], np.asarray(img)[-4, 10]
    assert top[0] > 200 > top[2] and bottom[2] > 200 > bottom[0]  # the left edge is now on top
    assert (m.width["ISIC_0000001"], m.height["ISIC_0000001"]) == ("80", "40")  # the original, as stored
    m = prepare("--resize-to", 256, *no_split).set_index("isic_id")
    with Image.open(os.path.join("dataset", m.file["ISIC_0000002"])) as img:
        assert img.size == (48, 40)  # smaller than RESIZE_TO: kept, never enlarged
    m = prepare("--resize-to", "none", *no_split).set_index("isic_id")
    with open(os.path.join("dataset", m.file["ISIC_0000002"]), "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == m.sha256["ISIC_0000002"]  # the original bytes


def test_rerun_replaces_the_dataset_and_cleans_leftovers(tmp_path, capsys):
    first, second = lesion_rows(12), lesion_rows(12, start=500)
    write_export("a", first)
    write_export("b", second)
    leftover = marked_folder(tmp_path / "dataset.tmp-99999", leftover_of=dead_run())  # its mark: a killed run's
    os.mkdir(leftover / "train")
    for name in ("dataset.old-2024-backup", "dataset.tmp-99998"):  # a user's own folders: never touched
        noise_image(os.path.join(name, "thesis.jpg"), 5)
    users = {name: fingerprint(name) for name in ("dataset.old-2024-backup", "dataset.tmp-99998")}
    args = ["--n-per-class", 100, "--val-fraction", 0, "--test-fraction", 0]
    for export in ["a", "b"]:
        m = prepare("--images-dir", export, "--metadata-csv", f"{export}/metadata.csv", *args)
    assert dataset_files() == sorted(m.file) and set(m.isic_id) == {r["isic_id"] for r in second}
    assert sorted(os.listdir()) == ["a", "b", "dataset", *sorted(users)]
    assert {name: fingerprint(name) for name in users} == users
    before = fingerprint("dataset")
    del before[folders.MARK]  # the mark says which run moved the folder, and no longer once it is back
    with ledger.updated("dataset") as mark:  # a kill between the two renames of a swap, as the run leaves it
        mark["leftover"] = dict(path=os.path.realpath("dataset.old-4242"), run=dead_run())
    os.rename("dataset", "dataset.old-4242")
    main_fails(prepare_dataset.main, ["--images-dir", "nothing"], capsys, "(nor a metadata.csv under nothing)")
    after = fingerprint("dataset")
    del after[folders.MARK]
    assert after == before and sorted(os.listdir()) == ["a", "b", "dataset", *sorted(users)]


def test_a_dataset_the_user_renamed_is_left_alone(tmp_path, capsys):
    """mv dataset dataset.old-1, a NOTES.txt inside, then prepare_dataset.py: no run of ours moved it (its mark
    says so), so it is neither restored nor removed, and one line names it."""
    write_export("a", lesion_rows(12))
    args = ["--images-dir", "a", "--metadata-csv", "a/metadata.csv", "--n-per-class", 100, "--val-fraction", 0]
    prepare(*args, "--test-fraction", 0)
    os.rename("dataset", "dataset.old-1")
    with open("dataset.old-1/NOTES.txt", "w") as f:
        f.write("my notes")
    before = fingerprint("dataset.old-1")
    prepare(*args, "--test-fraction", 0)
    assert fingerprint("dataset.old-1") == before
    assert "dataset.old-1 alone: no record says a run of ours left it" in capsys.readouterr().out


# ---------------------------------------------------------------------------- bad rows and images: counted
def test_bad_metadata_rows_are_counted_and_left_out(capsys):
    """Windows-1252 bytes, labels that disagree, an unknown image_type spelling, a repeated row, and isic_ids
    that try to leave the folder: read (with a warning), counted, left out; nothing outside is touched."""
    rows = export_rows(8, attribution="Dr. Müller, Universitätsklinik")
    for row in rows:
        row["benign_malignant"] = row["diagnosis_1"].lower()
    rows += [
        dict(rows[0], isic_id="ISIC_0000020", benign_malignant="malignant"),  # Benign vs malignant
        dict(rows[1], isic_id="ISIC_0000021", image_type="Clinical Overview"),
        dict(rows[2]),  # the same isic_id again
        dict(rows[3], isic_id="../../x"),
        dict(rows[3], isic_id="/etc/passwd"),
    ]
    export = write_export("isic_images", rows, encoding="cp1252")  # found under isic_images/
    noise_image("x.jpg", 7)  # where ../../x would point from a sub-folder
    outside = {k: v for k, v in fingerprint(".").items() if not k.startswith("isic_images")}
    m = prepare("--val-fraction", 0, "--test-fraction", 0)
    out, err = capsys.readouterr()
    assert "warning: isic_images/metadata.csv is not UTF-8; read it as Windows-1252" in err
    steps = summary(out)
    assert steps["rows read"].split() == ["13"]
    assert "left out: Clinical Overview 1" in steps["image_type clinical: overview or overview"]
    assert "left out: conflicting 1" in steps["with a definite benign/malignant side"]
    assert "refused 2: '../../x', '/etc/passwd'" in steps["with a valid isic_id"]
    assert "1 repeated rows kept once" in steps["unique isic_id"]
    assert sorted(m.isic_id) == [f"ISIC_{i:07d}" for i in range(8)]
    assert all(os.path.realpath(f).startswith(os.path.realpath(export) + os.sep) for f in m.source_file)
    after = {k: v for k, v in fingerprint(".").items() if k.split(os.sep)[0] not in ("isic_images", "dataset")}
    assert after == outside


@pytest.mark.slow
@pytest.mark.usefixtures("no_hang")
def test_bad_images_are_counted_odd_ones_converted_and_a_named_pipe_never_opened(tmp_path, monkeypatch):
    rows = export_rows(24)
    write_export("isic_images", rows)
    ids = [row["isic_id"] for row in rows]
    odd = dict(
        zip(
            [
                "cmyk",
                "16-bit",
                "grey",
                "rgba",
                "exif",
                "huge",
                "missing",
                "empty",
                "truncated",
                "text",
                "bomb",
                "symlink",
                "fifo",
                "copy",
            ],
            ids[8:],
        )
    )

    def path(kind, ext=".jpg"):
        return os.path.join("isic_images", odd[kind] + ext)

    for kind in odd:
        os.remove(path(kind))
    noise_image(path("cmyk"), 1, mode="CMYK")
    Image.fromarray(np.full((40, 48), 32896, np.uint16)).save(path("16-bit", ".png"))  # 16-bit grey, ~50%
    noise_image(path("grey"), 2, mode="L")
    noise_image(path("rgba", ".png"), 3, mode="RGBA")
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated by 90 degrees
    noise_image(path("exif"), 4, size=(80, 40), exif=exif)
    Image.new("L", (12000, 9000), 77).save(path("huge"), quality=50)  # 108 MP, under MAX_IMAGE_PIXELS
    open(path("empty"), "wb").close()
    noise_image(path("truncated"), 5, size=(200, 150))
    with open(path("truncated"), "r+b") as f:
        f.truncate(3000)  # cut short mid-scan
    with open(path("text"), "w") as f:
        f.write("this is not a JPEG")
    png_claiming(path("bomb", ".png"), 20000, 20000)  # 400 MP: over the limit
    os.symlink(noise_image(tmp_path / "outside.jpg", 6), path("symlink"))
    os.mkfifo(path("fifo"))  # opening it would wait forever
    with open(os.path.join("isic_images", ids[1] + ".jpg"), "rb") as f, open(path("copy"), "wb") as g:
        g.write(f.read())  # the same bytes under another id, with the same label

    r = run("prepare_dataset.py", "--workers", 2, "--val-fraction", 0, "--test-fraction", 0, cwd=tmp_path, timeout=120)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    found = summary(r.stdout)["with an image file"]
    assert f"missing 1: {odd['missing']}" in found and f"symlink out of isic_images 1: {odd['symlink']}" in found
    assert f"not a regular file 1: {odd['fifo']} (a named pipe)" in found
    unreadable = summary(r.stdout)["readable"]
    assert "unreadable 4: " in unreadable and f"{odd['bomb']} (DecompressionBombWarning)" in unreadable
    assert all(odd[kind] in unreadable for kind in ["empty", "truncated", "text"])
    assert "1 duplicate images kept once" in summary(r.stdout)["distinct images"]
    m = pd.read_csv("dataset/manifest.csv", dtype=str).set_index("isic_id")
    kept = [ids[0]] + ids[2:8] + ids[22:] + [odd[k] for k in ["cmyk", "16-bit", "grey", "rgba", "exif", "huge"]]
    assert sorted(set(m.index) - {ids[1], odd["copy"]}) == sorted(kept) and len(m) == len(kept) + 1
    for kind in ["cmyk", "16-bit", "grey", "rgba", "exif", "huge"]:
        with Image.open(os.path.join("dataset", m.file[odd[kind]])) as img:
            assert img.format == "JPEG" and img.mode == "RGB", kind
            size, pixels = img.size, np.asarray(img)
        assert size == {"exif": (40, 80), "huge": (341, 256)}.get(kind, (48, 40)), kind
    assert abs(int(pixels.mean()) - 77) <= 2  # the huge one: the same grey, shrunk
    with Image.open(os.path.join("dataset", m.file[odd["16-bit"]])) as img:
        assert abs(np.asarray(img).mean() - 128) < 2  # scaled from 16 to 8 bits, not clipped to 255
    os.makedirs("scratch")
    decoded, load_image = [], photos.load_image

    def decoding(*args, **kwargs):
        decoded.append(load_image(*args, **kwargs))
        return decoded[-1]

    monkeypatch.setattr(photos, "load_image", decoding)
    assert not isic.process_image((odd["huge"], path("huge"), "scratch", 256))["error"]
    assert [img.size for img in decoded] == [(1500, 1125)]  # decoded at 1/8 scale (Pillow draft): ~0.1 s, not ~4 s
    assert isic.process_image((odd["fifo"], path("fifo"), "scratch", 256))["error"] == "not a regular file"


# ---------------------------------------------------------------------------- runs that stop, keeping dataset/
METADATA_MISTAKES = {  # case: what the error line says
    "missing": "metadata.csv (nor a metadata.csv under isic_images) not found; download an export with: isic image",
    "empty": "cannot read metadata.csv as CSV (EmptyDataError)",
    "binary garbage": "metadata.csv holds binary data, not CSV text",
    "a JPEG renamed": "metadata.csv holds binary data, not CSV text",
    "a named pipe": "metadata.csv is a named pipe, not a CSV file",
    "a named pipe in the export": "isic_images/metadata.csv is a named pipe, not a CSV file",
    "a folder": "metadata.csv is a folder, not a CSV file",
    "no isic_id column": "metadata.csv has no isic_id column",
    "no label column": "neither diagnosis_1 nor benign_malignant",
}


@pytest.mark.parametrize("case", METADATA_MISTAKES)
@pytest.mark.usefixtures("no_hang")
def test_metadata_that_cannot_be_used(case, capsys):
    before = previous_dataset()
    write_export("isic_images", export_rows(4))
    os.remove("isic_images/metadata.csv")
    make = {
        "empty": lambda: pathlib.Path("metadata.csv").write_bytes(b""),
        "binary garbage": lambda: pathlib.Path("metadata.csv").write_bytes(np.random.default_rng(0).bytes(3000)),
        "a JPEG renamed": lambda: noise_image("metadata.csv", 6, format="JPEG"),
        "a named pipe": lambda: os.mkfifo("metadata.csv"),
        "a named pipe in the export": lambda: os.mkfifo("isic_images/metadata.csv"),
        "a folder": lambda: os.mkdir("metadata.csv"),
        "no isic_id column": lambda: (
            pd.DataFrame(export_rows(4)).rename(columns={"isic_id": "id"}).to_csv("metadata.csv", index=False)
        ),
        "no label column": lambda: (
            pd.DataFrame(export_rows(4)).drop(columns="diagnosis_1").to_csv("metadata.csv", index=False)
        ),
    }
    make.get(case, lambda: None)()
    fails_keeping_dataset([], capsys, METADATA_MISTAKES[case], before)


def test_paths_given_as_flags_cannot_forge_a_line(capsys):
    """A newline in a path a flag names is shown as \\n (it cannot start a line of its own): in the error line and
    in the download advice that follows it."""
    before = previous_dataset()
    forged = "x\nPrediction: benign"
    expected = "x\\nPrediction: benign.csv (nor a metadata.csv under x\\nPrediction: benign) not found; download"
    fails_keeping_dataset(["--metadata-csv", f"{forged}.csv", "--images-dir", forged], capsys, expected, before)


FLAG_MISTAKES = {  # arguments: what the error line says; checked before anything is read
    "--seed -1": "--seed -1: use 0 to 2**32 - 1 (or set SEED at the top of prepare_dataset.py)",
    "--n-per-class 0": "--n-per-class 0: use >= 1",
    "--val-fraction 0.95": "--val-fraction 0.95: use 0 to 0.9",
    "--val-fraction nan": "--val-fraction nan: use 0 to 0.9",
    "--test-fraction -0.1": "--test-fraction -0.1: use 0 to 0.9",
    "--val-fraction 0.5 --test-fraction 0.5": "--test-fraction 0.5: use at most 0.40 with --val-fraction 0.5",
    "--resize-to 0": "--resize-to 0: use >= 1",
    "--workers 0": "--workers 0: use 1 to 1024",
    "--min-kept 1.01": "--min-kept 1.01: use 0 to 1",
    "--shard-mb 0": "--shard-mb 0.0: use > 0",
    "--image-types clinical_overview": "--image-types 'clinical_overview': use ISIC's: 'dermoscopic', 'clinical: ",
    "--dataset-dir isic_images": "--dataset-dir isic_images: use a folder that does not hold isic_images",
    "--dataset-dir . --images-dir isic_images": "--dataset-dir .: use a folder that does not hold isic_images",
    "--dataset-dir notes.txt": "--dataset-dir notes.txt: use a folder, not a file",
}


@pytest.mark.parametrize("flags", FLAG_MISTAKES)
def test_flag_mistakes_stop_before_any_work(flags, capsys):
    before = previous_dataset()
    with open("notes.txt", "w") as f:
        f.write("a file, not a folder")
    fails_keeping_dataset(flags.split(), capsys, FLAG_MISTAKES[flags], before)  # no export needed: never read


def test_no_export_at_all_says_how_to_download(capsys):
    main_fails(
        prepare_dataset.main,
        [],
        capsys,
        'isic image download --search \'image_type:"clinical: overview" '
        "AND diagnosis_1:Benign' --limit 300 isic_images/benign, and the same with diagnosis_1:Malignant into "
        "isic_images/malignant (pip install isic-cli); or try python make_demo_data.py",
    )
    assert os.listdir() == []


def lost_class(case):
    """An export that lost its malignant class in one of the ways it happens."""
    rows = export_rows(17) + [
        dict(isic_id=f"ISIC_{90 + i:07d}", image_type="clinical: overview", diagnosis_1="Indeterminate")
        for i in range(2)
    ]
    if case == "another image type only":
        rows = [dict(r, image_type="dermoscopic") for r in rows]
    if case == "only benign downloaded":
        rows = [r for r in rows if r["diagnosis_1"] != "Malignant"]
    if case == "malignant under another name":
        rows = [dict(r, diagnosis_1="Melanoma") if r["diagnosis_1"] == "Malignant" else r for r in rows]
    if case == "few malignant lesions":  # 2 of 32 groups: StratifiedGroupKFold cannot put one in every split
        rows = [dict(r, diagnosis_1="Benign") for r in export_rows(30)] + [
            dict(r, diagnosis_1="Malignant") for r in export_rows(32)[30:]
        ]
    write_export("isic_images", rows)
    for r in rows:
        if r.get("diagnosis_1") == "Malignant" and case == "malignant images missing":
            os.remove(f"isic_images/{r['isic_id']}.jpg")
        if r.get("diagnosis_1") == "Malignant" and case == "malignant images unreadable":
            with open(f"isic_images/{r['isic_id']}.jpg", "r+b") as f:
                f.truncate(100)


LOST_CLASS = {  # case: what the error line says
    "another image type only": "no row has image type clinical: overview or overview; the export has dermoscopic 19: "
    "pass --image-types dermoscopic",
    "only benign downloaded": "no usable malignant images: 0 malignant rows, 0 with an image file; labels seen: "
    "diagnosis_1 Benign 9, Indeterminate 2",
    "malignant under another name": "no usable malignant images: 0 malignant rows, 0 with an image file; labels seen: "
    "diagnosis_1 Benign 9, Melanoma 8, Indeterminate 2",
    "malignant images missing": "no usable malignant images: 8 malignant rows, 0 with an image file;",
    "malignant images unreadable": "no usable malignant images: 8 malignant rows, 8 with an image file, 0 readable;",
    "few malignant lesions": "split would have no malignant images: the 2 malignant images are only 2 groups; "
    "add malignant images, or lower --val-fraction/--test-fraction",
}


@pytest.mark.parametrize("case", LOST_CLASS)
def test_a_dataset_that_lost_a_class_never_replaces_a_good_one(case, capsys):
    before = previous_dataset()
    lost_class(case)
    fails_keeping_dataset(["--min-kept", 0], capsys, LOST_CLASS[case], before)


def far_fewer(case):
    """20 definite rows (and 40 Indeterminate or empty ones, which are expected), 12 of them lost."""
    rows = export_rows(20) + [
        dict(r, isic_id=f"ISIC_{100 + i:07d}", diagnosis_1=["Indeterminate", ""][i % 2])
        for i, r in enumerate(export_rows(40))
    ]
    if case == "labels outside ISIC's vocabulary":
        rows = [
            dict(r, diagnosis_1=(["Benign?"] * 5 + ["Naevus"] * 4 + ["Melanoma"] * 3)[i - 8]) if 8 <= i < 20 else r
            for i, r in enumerate(rows)
        ]
    write_export("isic_images", rows)
    for i in range(8, 20):
        if case == "images missing":
            os.remove(f"isic_images/ISIC_{i:07d}.jpg")
        if case == "images unreadable":
            with open(f"isic_images/ISIC_{i:07d}.jpg", "w") as f:
                f.write("not a JPEG")


FAR_FEWER = {  # case: what the error line says
    "images missing": "only 8 of the 20 rows that should be usable survive (40% < --min-kept 0.5): missing 12 "
    "(ISIC_0000008, ISIC_0000009, ISIC_0000010, ...); fix the export, or pass --min-kept 0",
    "labels outside ISIC's vocabulary": "only 8 of the 20 rows that should be usable survive (40% < --min-kept 0.5): "
    "label outside ISIC's vocabulary or in conflict 12 ('Benign?' 5, 'Naevus' 4, "
    "'Melanoma' 3)",
    "images unreadable": "only about 8 of the 20 rows that should be usable survive (40% < --min-kept 0.5): "
    "unreadable (of 20 decoded) 12 (ISIC_",
}


@pytest.mark.parametrize("case", FAR_FEWER)
def test_far_fewer_images_than_the_export_holds_stops(case, capsys):
    before = previous_dataset()
    far_fewer(case)
    fails_keeping_dataset([], capsys, FAR_FEWER[case], before)
    m = prepare("--min-kept", 0, "--val-fraction", 0, "--test-fraction", 0)  # on purpose: what is left
    assert len(m) == 8 and not m.isic_id.isin([f"ISIC_{i:07d}" for i in range(8, 20)]).any()


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_a_full_disk_is_one_line_naming_the_file_and_keeps_the_dataset(tmp_path, workers):
    before = previous_dataset()
    write_export("isic_images", export_rows(6))
    noise_image("isic_images/ISIC_0000003.jpg", 3, size=(700, 500), quality=95)  # ~1 MB: over the limit below
    r = run(
        "prepare_dataset.py",
        "--workers",
        workers,
        "--resize-to",
        "none",
        "--val-fraction",
        0,
        "--test-fraction",
        0,
        cwd=tmp_path,
        file_size_limit=200_000,
    )
    assert_one_error(r.returncode, r.stderr, "could not write dataset.tmp-")
    assert "ISIC_0000003.jpg (File too large); free some disk space or pass another --dataset-dir" in r.stderr
    assert "unreadable" not in r.stdout + r.stderr
    assert fingerprint("dataset") == before and glob.glob("dataset*") == ["dataset"]


# ---------------------------------------------------------------------------- two runs, kills, Ctrl-C
@pytest.fixture(scope="module")
def big_export(tmp_path_factory):
    """An export that takes a few seconds to prepare: 160 photos of 400 x 300 px."""
    folder = tmp_path_factory.mktemp("big_export")
    write_export(folder, export_rows(160), size=(400, 300), quality=90)
    return ["--metadata-csv", str(folder / "metadata.csv"), "--images-dir", str(folder)]


def start(args):
    """prepare_dataset.py running, once its dataset.tmp-<pid> holds a file (its mark, written before the metadata
    is read): a signal then lands anywhere in the run, in lazy imports too."""
    return conftest.start("prepare_dataset.py", args, lambda _: any(os.listdir(t) for t in glob.glob("dataset.tmp-*")))


@pytest.mark.slow
def test_a_second_run_in_the_folder_stops_and_leaves_the_first_alone(big_export, capsys):
    first = start([*big_export, "--workers", 1])
    live = glob.glob("dataset.tmp-*")
    main_fails(
        prepare_dataset.main,
        big_export,
        capsys,
        f"prepare_dataset.py (pid {first.pid}, building dataset.tmp-{first.pid}) is writing in {os.getcwd()}; "
        "wait for it to finish",
    )
    assert glob.glob("dataset.tmp-*") == live  # its folder not cleaned away as a leftover
    code, out, err = finish(first)
    assert code == 0, err
    assert len(pd.read_csv("dataset/manifest.csv")) == 160 and sorted(os.listdir()) == ["dataset"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "sig, to",
    [(signal.SIGKILL, "group"), (signal.SIGINT, "group"), (signal.SIGTERM, "script"), (signal.SIGTERM, "group")],
    ids=["SIGKILL", "SIGINT", "SIGTERM", "SIGTERM to the group"],
)
def test_killed_or_interrupted_keeps_the_previous_dataset(big_export, tmp_path, sig, to):
    """SIGTERM to the script alone (kill PID) left its workers printing BrokenPipeError tracebacks: now one line,
    death by SIGTERM (as a kill: the shell says 143), no temporary folder, the previous dataset untouched."""
    before = previous_dataset()
    p = start([*big_export, "--workers", 2])
    if to == "group":
        os.killpg(p.pid, sig)  # to the whole group, as Ctrl-C in a terminal
    else:
        os.kill(p.pid, sig)
    code, out, err = finish(p)
    assert fingerprint("dataset") == before and "Traceback" not in err
    if sig == signal.SIGKILL:
        assert code == -signal.SIGKILL and glob.glob("dataset.tmp-*")  # what a kill leaves, for the next run
        r = run("prepare_dataset.py", *big_export, "--n-per-class", 10, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert sorted(os.listdir()) == ["dataset"] and len(pd.read_csv("dataset/manifest.csv")) == 20
    else:
        assert code == (130 if sig == signal.SIGINT else -signal.SIGTERM), err
        assert err.strip().splitlines()[-1] == "interrupted; the previous dataset is untouched"
        assert sorted(os.listdir()) == ["dataset"]


# ---------------------------------------------------------------------------- the demo export, prepared
@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo export (64 px photos, to save time), prepared as `make demo` does; returns the folder."""
    folder = tmp_path_factory.mktemp("demo")
    prepare_args = ["--metadata-csv", "demo_data/metadata.csv", "--images-dir", "demo_data"]
    for script, args in [("make_demo_data.py", ["--photo-size", 64]), ("prepare_dataset.py", prepare_args)]:
        r = run(script, *args, cwd=folder)
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
        assert r.stdout.strip().splitlines()[-1].startswith("wrote ")
    return folder


@pytest.mark.slow
def test_the_demo_export_is_prepared_balanced_and_grouped(demo):
    m = pd.read_csv(demo / "dataset" / "manifest.csv", dtype=str, keep_default_na=False)
    assert m.label.value_counts().to_dict() == {"benign": 200, "malignant": 200} and m.sha256.is_unique
    assert_grouped(m, "lesion_id", "patient_id")


@pytest.mark.skipif(REAL_SAMPLE is None, reason="no /work/shared or ../shared/real_isic_sample (only in the dev setup)")
def test_real_isic_sample(capsys):
    m = prepare(
        "--metadata-csv",
        os.path.join(REAL_SAMPLE, "metadata.csv"),
        "--images-dir",
        REAL_SAMPLE,
        "--image-types",
        "dermoscopic",
        "--n-per-class",
        30,
        workers=2,
    )
    assert m.label.value_counts().to_dict() == {"benign": 30, "malignant": 30}
    assert all(0.1 <= (m.split == s).mean() <= 0.2 for s in ["val", "test"])
    assert dataset_files() == sorted(m.file)
    assert summary(capsys.readouterr().out)["rows read"].split() == ["2195"]


# ---------------------------------------------------------------------------- never touch what isn't ours
@pytest.mark.parametrize("case", ["a user's folder", "inside the export", "a symlink", "none"])
def test_a_dataset_dir_that_is_not_ours_is_refused_and_left_byte_identical(case, capsys):
    write_export("isic_images", export_rows(12))
    noise_image("isic_images/unseen/photo.jpg", 3)
    noise_image("thesis/figure.jpg", 4)
    with open("thesis/thesis.txt", "w") as f:
        f.write("three years of work")
    os.makedirs("thesis/sub")
    with open("thesis/sub/notes.md", "w") as f:
        f.write("# notes")
    os.symlink("thesis", "linked")
    before = fingerprint(".")
    argv, expected = {
        "a user's folder": (
            ["--dataset-dir", "thesis"],
            "--dataset-dir thesis holds files that prepare_dataset.py "
            "did not make (figure.jpg, sub, thesis.txt); pass a new or empty folder",
        ),
        "inside the export": (["--dataset-dir", "isic_images/unseen"], "--dataset-dir isic_images/unseen holds files"),
        "a symlink": (
            ["--dataset-dir", "linked"],
            "--dataset-dir linked is a symbolic link; pass the folder it points",
        ),
        "none": (["--dataset-dir", "none"], "argument --dataset-dir: none: this flag needs a value"),
    }[case]
    main_fails(prepare_dataset.main, argv, capsys, expected)
    assert fingerprint(".") == before and os.path.islink("linked")


def test_labels_that_contradict_each_other_are_counted_and_left_out(capsys):
    """One isic_id listed twice with opposite labels, and one photo (the same bytes) under two ids with opposite
    labels: no label silently wins; the rows are left out and counted."""
    rows = export_rows(20)
    rows.append(dict(rows[4], diagnosis_1="Malignant"))  # ISIC_0000004 is Benign above
    write_export("isic_images", rows)
    with open("isic_images/ISIC_0000006.jpg", "rb") as f, open("isic_images/ISIC_0000007.jpg", "wb") as g:
        g.write(f.read())  # ISIC_0000006 is Benign, ISIC_0000007 Malignant: the same photo
    m = prepare("--val-fraction", 0, "--test-fraction", 0, "--min-kept", 0)
    out = capsys.readouterr().out
    assert not m.isic_id.isin(["ISIC_0000004", "ISIC_0000006", "ISIC_0000007"]).any() and len(m) == 17
    assert "left out 2: ISIC_0000004" in summary(out)["no isic_id with different labels"]
    assert "left out 2" in summary(out)["no photo with different labels"]


def test_no_row_of_the_wanted_type_names_the_types_there_are_and_the_flag(capsys):
    write_export(
        "isic_images",
        [dict(r, image_type="clinical: close-up") for r in export_rows(10)]
        + [dict(r, isic_id=f"ISIC_{50 + i:07d}", image_type="dermoscopic") for i, r in enumerate(export_rows(4))],
    )
    main_fails(
        prepare_dataset.main,
        [],
        capsys,
        "no row has image type clinical: overview or overview; the export "
        "has clinical: close-up 10, dermoscopic 4: pass --image-types 'clinical: close-up'",
    )


def test_photos_left_unused_are_counted_with_the_flag_to_use_them_all(capsys):
    write_export("isic_images", export_rows(30))
    prepare("--n-per-class", 10, "--val-fraction", 0, "--test-fraction", 0)
    out = capsys.readouterr().out
    for side in ("benign", "malignant"):
        assert f"note: 5 usable {side} images left unused (N_PER_CLASS 10): pass --n-per-class 15 to use them" in out


# ---------------------------------------------------------------------------- what the model card needs
def card_export(with_columns=True):
    """An export with the columns a model card reports (or none of them), attribution.txt and licenses/."""
    rows = []
    for i, row in enumerate(export_rows(40)):
        extra = dict(
            copyright_license=["CC-BY-NC", "CC-BY", "CC-0"][i % 3],
            sex=["female", "male", ""][i % 3],
            age_approx=str(25 + 10 * (i % 6)),
            anatom_site_general=["head/neck", "anterior torso"][i % 2],
            fitzpatrick_skin_type=["II", "", "III", ""][i % 4],
            diagnosis_confirm_type="histopathology",
            attribution=["Clinic A", "Clinic B"][i % 2],
        )
        rows.append(dict(row, **extra) if with_columns else {k: row[k] for k in ("isic_id", "diagnosis_1")})
    write_export("isic_images", rows)
    if with_columns:
        with open("isic_images/attribution.txt", "w") as f:
            f.write("Clinic A\n\nClinic B")
        os.makedirs("isic_images/licenses")
        for name in ("CC-BY-NC", "CC-BY", "CC-0"):
            with open(f"isic_images/licenses/{name}.txt", "w") as f:
                f.write(f"the text of {name}")


def test_the_metadata_a_card_reports_and_the_credits_travel_into_the_dataset(capsys):
    card_export()
    m = prepare("--val-fraction", 0.25, "--test-fraction", 0.25)
    out = capsys.readouterr().out
    for column in (
        "copyright_license",
        "sex",
        "age_approx",
        "anatom_site_general",
        "fitzpatrick_skin_type",
        "diagnosis_confirm_type",
        "attribution",
    ):
        assert column in m, column
    assert set(m.copyright_license) == {"CC-BY-NC", "CC-BY", "CC-0"}
    with open("dataset/attribution.txt") as f:
        assert f.read().split() == ["Clinic", "A", "Clinic", "B"]
    assert sorted(os.listdir("dataset/licenses")) == ["CC-0.txt", "CC-BY-NC.txt", "CC-BY.txt"]
    assert "attribution.txt (2 attributions) and licenses/ (CC-0.txt, CC-BY-NC.txt, CC-BY.txt) copied" in out
    shown = out.split("whom and what the photos show, per split")[1]
    sex = shown.split("  sex\n")[1].split("\n  ")[0]
    assert "train" in sex and "unknown" in sex and "licence" in shown and "val " in shown.split("  licence\n")[1]
    assert "skin type" in shown and "age band" in shown and "body site" in shown


def test_credit_files_that_are_links_out_of_the_export_are_refused(tmp_path, capsys):
    """attribution.txt and a licence that are links out of the export are refused and named, as photo links
    are; a link inside the export is fine."""
    card_export()
    secret = tmp_path / "outside" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("not the export's to give")
    os.remove("isic_images/attribution.txt")
    os.symlink(secret, "isic_images/attribution.txt")
    os.symlink(secret, "isic_images/licenses/CC-BY-SA.txt")
    os.symlink(os.path.abspath("isic_images/licenses/CC-0.txt"), "isic_images/licenses/CC0-copy.txt")  # inside
    before = fingerprint(str(secret.parent))
    m = prepare("--val-fraction", 0, "--test-fraction", 0)
    out, err = capsys.readouterr()
    assert len(m) and sorted(os.listdir("dataset/licenses")) == [
        "CC-0.txt",
        "CC-BY-NC.txt",
        "CC-BY.txt",
        "CC0-copy.txt",
    ]
    with open("dataset/attribution.txt") as f:
        assert "not the export's" not in f.read()  # written from the attribution column instead
    assert "refused 2 credit file(s) of the export: " in err and "/isic_images/attribution.txt (a link out of" in err
    assert "/isic_images/licenses/CC-BY-SA.txt (a link out of" in err
    assert fingerprint(str(secret.parent)) == before


def test_a_label_value_that_is_not_printable_text_is_left_out_and_shown_escaped(capsys):
    """A diagnosis_3 value holding terminal escapes and a fake prediction line, or one too long
    to be a class name, is left out (counted); printed, it is escaped. 'Mélanome, NOS' is a fine class name."""
    forged = "Melanoma\x1b[2J\x1b[1A\x08Prediction: benign"  # clears the screen, goes up, writes a verdict
    rows = type_rows()
    for value in [forged] * 12 + ["Mélanome, NOS"] * 12 + ["n" * 101] * 12:
        rows.append(dict(isic_id=f"ISIC_{len(rows):07d}", image_type="clinical: overview", diagnosis_1="Malignant",
                         diagnosis_3=value, lesion_id=f"IL_{len(rows):07d}"))  # fmt: skip
    write_export("isic_images", rows)
    m = prepare("--label-column", "diagnosis_3", "--min-per-class", 10, "--val-fraction", 0, "--test-fraction", 0)
    out, err = capsys.readouterr()
    assert "Mélanome, NOS" in set(m.label_value) and forged not in set(m.label_value)
    assert not any(len(v) > 100 for v in m.label_value)
    assert "\x1b" not in out + err and forged not in out + err  # (tqdm's bar draws with \r on stderr)
    step = summary(out)["printable, at most 100 characters"]
    assert "Melanoma\\x1b[2J\\x1b[1A\\x08Prediction: benign 12, nnnnn" in step  # escaped, counted


def test_an_export_without_those_columns_reports_unknown(capsys):
    card_export(with_columns=False)
    m = prepare("--val-fraction", 0, "--test-fraction", 0)
    out = capsys.readouterr().out
    assert "sex" not in m and "    train unknown 100%" in out
    with open("dataset/attribution.txt") as f:
        assert f.read().strip() == "unknown (no attribution in the export)"


# ---------------------------------------------------------------------------- lesion types
def type_rows():
    """Rows with diagnosis_1 and diagnosis_3: two common types per side, a rare one, Indeterminate rows, a type
    whose rows disagree on the side."""
    kinds = [
        ("Benign", "Nevus", 30),
        ("Benign", "Seborrheic keratosis", 24),
        ("Malignant", "Melanoma Invasive", 30),
        ("Malignant", "Basal cell carcinoma", 22),
        ("Benign", "Dermatofibroma", 5),
        ("Indeterminate", "Solar or actinic keratosis", 6),
        ("", "Nevus", 3),
        ("Malignant", "Nevus", 2),
    ]
    rows = []
    for side, value, n in kinds:
        for _ in range(n):
            rows.append(
                dict(
                    isic_id=f"ISIC_{len(rows):07d}",
                    image_type="clinical: overview",
                    diagnosis_1=side,
                    diagnosis_3=value,
                    lesion_id=f"IL_{len(rows):07d}",
                )
            )
    return rows


def test_types_from_a_label_column_keep_their_side_and_the_rare_ones_are_counted(capsys):
    write_export("isic_images", type_rows())
    m = prepare("--label-column", "diagnosis_3", "--min-per-class", 10, "--val-fraction", 0.2, "--test-fraction", 0.2)
    out, err = capsys.readouterr()
    assert sorted(m.label.unique()) == ["basal_cell_carcinoma", "melanoma_invasive", "nevus", "seborrheic_keratosis"]
    sides = m.groupby("label").side.first().to_dict()
    assert sides == {
        "nevus": "benign",
        "seborrheic_keratosis": "benign",
        "melanoma_invasive": "malignant",
        "basal_cell_carcinoma": "malignant",
    }
    assert set(m.label_value) == {"Nevus", "Seborrheic keratosis", "Melanoma Invasive", "Basal cell carcinoma"}
    assert (m.label_column == "diagnosis_3").all() and os.path.isdir("dataset/train/melanoma_invasive")
    assert "1 value(s) of diagnosis_3 with fewer than 10 usable photos left out (5 photos): Dermatofibroma 5" in err
    assert "1 type(s) with rows on both sides" in err and "'Nevus' (benign 30, malignant 2)" in err
    assert len(m[m.label == "nevus"]) == 30  # the 2 'malignant' nevi left out, and the 3 without a side
    assert "left out: 'Indeterminate' 6, empty 3" in summary(out)["with a definite benign/malignant side"]
    assert_grouped(m, "lesion_id")


def test_other_merges_the_rare_types_of_each_side(capsys):
    write_export("isic_images", type_rows())
    m = prepare(
        "--label-column", "diagnosis_3", "--min-per-class", 25, "--other", "--val-fraction", 0, "--test-fraction", 0
    )
    assert sorted(m.label.unique()) == ["melanoma_invasive", "nevus", "other_benign"]
    other = m[m.label == "other_benign"]
    assert set(other.label_value) == {"other benign"} and len(other) == 29  # seborrheic keratosis 24, dermatofibroma 5
    assert "other malignant 22" in capsys.readouterr().err  # basal cell carcinoma alone: still too few, and counted


def test_the_legacy_diagnosis_column_takes_its_side_from_benign_malignant():
    rows = [
        dict(
            isic_id=f"ISIC_{i:07d}",
            benign_malignant=["benign", "malignant"][i % 2],
            diagnosis=["nevus", "melanoma"][i % 2],
        )
        for i in range(40)
    ]
    write_export("isic_images", rows)
    m = prepare("--label-column", "diagnosis", "--val-fraction", 0, "--test-fraction", 0)
    assert m.groupby("label").side.first().to_dict() == {"melanoma": "malignant", "nevus": "benign"}


def test_two_different_photos_under_one_id_are_counted_named_and_left_out(capsys):
    """An id with a .jpg and a .png, or a photo again in a sub-folder: one was used silently. Byte-identical
    copies are one photo (used once, counted); different ones cannot tell which shows the row's lesion: the id
    is left out, counted and named."""
    rows = export_rows(12)
    write_export("isic_images", rows)
    noise_image("isic_images/ISIC_0000001.png", 101)  # another photo, another format
    os.makedirs("isic_images/again")
    noise_image("isic_images/again/ISIC_0000002.jpg", 102)  # another photo in a sub-folder
    with open("isic_images/ISIC_0000003.jpg", "rb") as f:  # the same photo in a sub-folder: one photo
        pathlib.Path("isic_images/again/ISIC_0000003.jpg").write_bytes(f.read())
    m = prepare("--val-fraction", 0, "--test-fraction", 0)
    steps = summary(capsys.readouterr().out)
    assert sorted(m.isic_id) == [f"ISIC_{i:07d}" for i in range(12) if i not in (1, 2)]
    assert m.set_index("isic_id").source_file["ISIC_0000003"] == os.path.join("isic_images", "ISIC_0000003.jpg")
    found = steps["with an image file"]
    assert found.split()[0] == "10" and "1 byte-identical copies of a photo used once" in found
    assert (
        "different photos under one isic_id 2: ISIC_0000001 (ISIC_0000001.jpg, ISIC_0000001.png), "
        f"ISIC_0000002 (ISIC_0000002.jpg, {os.path.join('again', 'ISIC_0000002.jpg')})"
    ) in found


def test_a_label_column_of_ids_says_what_is_wrong_with_the_column(capsys):
    """--label-column lesion_id (an id per photo): every value was too rare, and the run said '0 with an image
    file'. A column of types whose malignant ones are all too rare says so, without calling them ids."""
    rows = export_rows(40)
    for i, row in enumerate(rows):
        row.update(lesion_id=f"IL_{i:07d}", diagnosis_3=["Nevus", f"Melanoma {i % 4}"][i % 2])
    write_export("isic_images", rows)
    ids = "none of its 20 benign values (20 photos: about one a value, ids rather than types) has --min-per-class 20"
    main_fails(
        prepare_dataset.main,
        ["--label-column", "lesion_id", "--workers", 1],
        capsys,
        f"--label-column lesion_id: {ids} usable photos; pass a column of lesion types such as diagnosis_3",
    )
    types = "none of its 2 malignant values (20 photos) has --min-per-class 11 usable photos; pass a column"
    main_fails(prepare_dataset.main, ["--label-column", "diagnosis_3", "--workers", 1, "--min-per-class", 11], capsys,
               f"--label-column diagnosis_3: {types}")  # fmt: skip
    assert not os.path.exists("dataset")


def test_photos_of_another_kind_are_kept_beside_the_splits_for_the_familiarity_check(capsys):
    """An export of clinical overview photos with dermoscopic and close-up ones: the dataset is what it would be
    without them, and beside it, in other_types/, the dermoscopic photos (another kind; close-ups are clinical too),
    said in one line; --keep-other-types 0 keeps none."""
    rows = lesion_rows(20)
    for start, image_type, lesions in ((500, "dermoscopic", 4), (600, "clinical: close-up", 3)):
        others = lesion_rows(lesions)
        rows += [dict(r, isic_id=f"ISIC_{start + n:07d}", image_type=image_type) for n, r in enumerate(others)]
    write_export("isic_images", rows)
    m = prepare()
    out = capsys.readouterr().out
    assert not m.isic_id.str.startswith("ISIC_00005").any() and dataset_files() == sorted(m.file)
    kept = sorted(os.listdir(os.path.join("dataset", other_types.FOLDER)))
    assert kept == [f"dermoscopic.ISIC_{500 + n:07d}.jpg" for n in range(7)]  # 4 lesions: 7 photos
    assert "kept 7 photos of another kind in dataset/other_types/ for the familiarity check: dermoscopic 7" in out
    assert prepare("--keep-other-types", 0).equals(m)
    assert not os.path.exists(os.path.join("dataset", other_types.FOLDER))
