"""skinlesion/shard_format.py: a shards index is checked against its shape and against itself, and each shard's
members against the index, as the model file is: a malformed index, a crafted shard name, a stray member, a
named pipe for a shard or deeply nested JSON is one line naming the file, never a traceback, a hang or a command
run; a full disk while writing shards names the file and the flag."""

import io
import json
import os
import tarfile

import pandas as pd
import pytest

from conftest import alarm, assert_one_error, fails, noise_image, run
from skinlesion import dataset, shard_format, splits


@pytest.fixture
def sharded(tmp_path):
    """A prepared dataset of 12 small photos (train and test) written as shards: the shards folder."""
    rows = []
    for i in range(12):
        split, label = ("train", "test")[i % 2], ("benign", "malignant")[i // 2 % 2]
        file = f"{split}/{label}/ISIC_{i:07d}.jpg"
        noise_image(tmp_path / "dataset" / file, i, size=(16, 16))
        rows.append(dict(isic_id=f"ISIC_{i:07d}", split=split, label=label, lesion_id="", patient_id="", file=file))
    manifest = pd.DataFrame(rows)
    manifest.to_csv(tmp_path / "dataset" / dataset.MANIFEST, index=False)
    shard_format.write_shards(str(tmp_path / "dataset"), manifest, 0.01)
    return tmp_path / "dataset" / shard_format.FOLDER


def index_of(folder):
    with open(folder / shard_format.INDEX) as f:
        return json.load(f)


def train(index):
    return index["splits"]["train"]


def write_index(folder, index):
    (folder / shard_format.INDEX).write_text(json.dumps(index))


def test_the_shards_written_are_read_back_whole(sharded):
    """The nearest thing accepted by every check below."""
    blobs = splits.read_blobs(str(sharded), "train")
    assert len(blobs) == 6 and all(name.startswith(str(sharded / "train")) for name in blobs)
    assert len(index_of(sharded)["splits"]["train"]["shards"]) >= 2


def test_a_crafted_shard_name_is_refused_before_anything_runs(sharded, tmp_path, capsys):
    """Under a pipe: address the name followed the command: 'x.tar; touch FILE' ran touch, and the evaluation
    ended with rc 0. A name is a plain file name, checked before it goes anywhere."""
    marker = tmp_path / "it-ran"
    index = index_of(sharded)
    index["splits"]["test"]["shards"][0]["name"] = f"test-000000.tar; touch {marker}"
    write_index(sharded, index)
    with alarm(60, "hung"):
        expected = "is not an index prepare_dataset.py --shards wrote: its index.splits['test'].shards[0].name 'test-"
        fails(capsys, expected, splits.class_files, f"pipe:cat {sharded}/test", ["benign", "malignant"])
        fails(capsys, "is not a plain file name ending in .tar", splits.read_blobs, f"pipe:cat {sharded}", "test")
    assert not marker.exists()


@pytest.mark.parametrize(
    "change, expected",
    [
        (
            lambda index: index.pop("splits"),
            "its index {'format': 'webdataset', 'classes': ['benign', 'malignant']}"
            " is not a table with splits (missing)",
        ),  # fmt: skip
        (
            lambda index: index["splits"]["train"]["shards"][0].update(samples="3"),
            "shards[0].samples '3' is not a whole",
        ),
        (lambda index: index["splits"]["train"]["keys"].pop(), "its train keys, files, labels and shards count [5, 6]"),
        (lambda index: index["splits"]["train"]["files"].__setitem__(0, "../../etc/passwd"), "is not a relative path"),
        (
            lambda index: index["splits"]["train"]["labels"].__setitem__(0, "melanoma"),
            "labels ['melanoma'] are not its",
        ),
        (lambda index: index["splits"].update(extra=index["splits"]["train"]), "its split 'extra' is none of train"),
    ],
    ids=["no splits", "a count as text", "a key missing", "a file outside", "an unknown label", "an unknown split"],
)
def test_a_malformed_index_is_one_line_naming_it(sharded, capsys, change, expected):
    """KeyError, AttributeError and TypeError tracebacks before."""
    index = index_of(sharded)
    change(index)
    write_index(sharded, index)
    _, err = fails(capsys, expected, splits.read_blobs, str(sharded), "train")
    assert f"{sharded / shard_format.INDEX} is not an index prepare_dataset.py --shards wrote: " in err


def test_an_index_that_is_nested_too_deeply_or_a_named_pipe_is_one_line(sharded, capsys):
    (sharded / shard_format.INDEX).write_text("[" * 100_000 + "]" * 100_000)
    fails(capsys, f"{sharded / shard_format.INDEX} is JSON nested too deeply to read; make the shards with",
          splits.read_blobs, str(sharded), "train")  # fmt: skip
    os.remove(sharded / shard_format.INDEX)
    os.mkfifo(sharded / shard_format.INDEX)
    with alarm(60, "blocked on a named pipe"):
        fails(capsys, f"{sharded / shard_format.INDEX} is a named pipe, not a regular file; make the shards with",
              splits.class_files, str(sharded / "test"), ["benign", "malignant"])  # fmt: skip


def rewritten(path, change):
    """The shard at path rewritten with change(list of (name, bytes)); returns its new size."""
    with tarfile.open(path) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in change(members):
            shard_format.add_file(tar, name, data)
    return os.path.getsize(path)


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda m: m[:3] + [("evil.sh", b"rm -rf ~")] + m[3:], "holds a stray member evil.sh (where ISIC_"),
        (lambda m: m + [("ISIC_0000099.jpg", b"x")], "holds a stray member ISIC_0000099.jpg (after its last photo)"),
        (lambda m: [(n, b"1" if n.endswith(".cls") else d) for n, d in m], ".cls/.json (not what the index says"),
        (lambda m: m[:-1], "a photo without all three of its members"),
    ],
    ids=["a stray member", "a photo too many", "another class", "a member missing"],
)
def test_a_shard_with_a_stray_member_is_one_line(sharded, capsys, change, expected):
    index = index_of(sharded)
    first = index["splits"]["train"]["shards"][0]
    first["bytes"] = rewritten(sharded / first["name"], change)
    write_index(sharded, index)
    _, err = fails(capsys, expected, splits.read_blobs, str(sharded), "train")
    assert f"shard {sharded / first['name']} " in err


def test_a_shard_that_is_a_named_pipe_is_one_line_not_a_hang(sharded, capsys):
    first = index_of(sharded)["splits"]["train"]["shards"][0]["name"]
    os.remove(sharded / first)
    os.mkfifo(sharded / first)
    with alarm(60, "blocked on a named pipe"):
        fails(capsys, f"shard {sharded / first} is a named pipe: copy the shards again", splits.read_blobs,
              str(sharded), "train")  # fmt: skip


def test_the_tar_members_hold_what_the_index_says(sharded):
    index = index_of(sharded)
    entry = index["splits"]["test"]
    with tarfile.open(sharded / entry["shards"][0]["name"]) as tar:
        names = tar.getnames()
        about = json.load(io.BytesIO(tar.extractfile(names[2]).read()))
    key = entry["keys"][0]
    assert names[:3] == [f"{key}.jpg", f"{key}.cls", f"{key}.json"] and about["file"] == entry["files"][0]


@pytest.mark.slow
def test_a_full_disk_while_writing_shards_names_the_file_and_the_flag(tmp_path):
    rows = [dict(isic_id=f"ISIC_{i:07d}", image_type="clinical: overview", diagnosis_1=("Benign", "Malignant")[i % 2])
            for i in range(16)]  # fmt: skip
    from conftest import write_export

    write_export(tmp_path / "export", rows, size=(64, 64))
    r = run("prepare_dataset.py", "--metadata-csv", tmp_path / "export" / "metadata.csv", "--images-dir",
            tmp_path / "export", "--shards", "--val-fraction", 0, "--test-fraction", 0, "--workers", 1,
            "--resize-to", "none", cwd=tmp_path, file_size_limit=40_000)  # fmt: skip
    assert_one_error(r.returncode, r.stderr, "/shards/train-000000.tar (File too large); free some disk space or pass "
                     "another --dataset-dir (--shards writes every photo a second time)")  # fmt: skip
    assert sorted(os.listdir(tmp_path)) == ["export"]
