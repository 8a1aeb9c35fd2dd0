"""Shards (skinlesion/shards.py): the same small data set as folders and as shards holds the same photos, labels
and splits and trains the same run; a stream gives every process its own shards, in an order set by the seed;
a truncated or missing shard is one line, not a hang; torchrun with two launchers (two 'machines') trains from
shards, each process on its own, only rank 0 writing, and a run killed mid-epoch resumes."""

import functools
import glob
import http.server
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time

import pandas as pd
import pytest
import torch

import AItraining
from conftest import ENV, ROOT, SERVER_POLL, assert_one_error, export_rows, lesion_photo, run, save_model, write_export
from skinlesion import dataset, model_file, photos, shard_format, shards, splits

pytestmark = pytest.mark.slow  # each test prepares a dataset with prepare_dataset.py, or trains

FAST = ["--no-pretrained", "--image-size", 32, "--batch-size", 8, "--num-workers", 0, "--folds", 1]  # one split


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """64 learnable 64 px photos prepared as folders and as shards of ~6 photos (7 train shards)."""
    root = tmp_path_factory.mktemp("shards")
    rows = export_rows(64)
    write_export(root / "export", rows)
    for i, row in enumerate(rows):
        lesion_photo(root / "export" / f"{row['isic_id']}.jpg", (64, 64), i, row["diagnosis_1"] == "Malignant")
    r = run(
        "prepare_dataset.py",
        *["--metadata-csv", root / "export" / "metadata.csv", "--images-dir", root / "export"],
        *["--dataset-dir", root / "dataset", "--shards", "--shard-mb", 0.03, "--workers", 1],
        cwd=root,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return str(root / "dataset")


def read_json(path):
    with open(path) as f:
        return json.load(f)


def tar_samples(path):
    """{isic_id: {extension: bytes}} of a tar shard, read with the standard library alone."""
    found = {}
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            key, extension = member.name.split(".", 1)
            found.setdefault(key, {})[extension] = tar.extractfile(member).read()
    return found


def test_folders_and_shards_hold_the_same_photos_labels_and_splits(prepared):
    folder, sharded = prepared, os.path.join(prepared, "shards")
    manifest = dataset.read_manifest(folder)
    assert dataset.read_manifest(sharded).equals(manifest)  # the manifest travels with the shards
    classes = dataset.classes_of(manifest)[0]
    seen = set()
    for split in dataset.SPLITS:
        paths, labels = splits.split_photos(folder, split, classes)
        names, shard_labels = splits.split_photos(sharded, split, classes)
        relative = [os.path.relpath(p, folder) for p in paths]
        assert [os.path.relpath(n, sharded) for n in names] == relative and (shard_labels == labels).all()
        blobs = splits.read_blobs(sharded, split)
        for path, name in zip(paths, names):
            with open(path, "rb") as f:
                assert blobs[name] == f.read()
        some = set(names[::2])  # the familiarity fit keeps only its sample's bytes
        assert splits.read_blobs(sharded, split, some) == {name: blobs[name] for name in some}
        entry = read_json(os.path.join(sharded, shard_format.INDEX))["splits"][split]
        assert len(entry["shards"]) >= 2
        for shard in entry["shards"]:  # each sample: the photo's bytes, its class and ids, its split (manifest)
            for key, sample in tar_samples(os.path.join(sharded, shard["name"])).items():
                ids = json.loads(sample["json"])
                row = manifest.set_index("isic_id").loc[key]
                assert ids["split"] == row.split == split and ids["label"] == row.label and key not in seen
                assert classes[int(sample["cls"])] == row.label and ids["file"] == row.file
                with open(os.path.join(folder, row.file), "rb") as f:
                    assert sample[row.file.rsplit(".", 1)[1]] == f.read()
                seen.add(key)
    assert seen == set(manifest.isic_id)


def test_the_same_run_from_folders_and_from_shards(prepared, tmp_path, monkeypatch, capsys):
    lines = []
    for data in (prepared, os.path.join(prepared, "shards")):
        os.makedirs(tmp_path / os.path.basename(data))
        monkeypatch.chdir(tmp_path / os.path.basename(data))
        AItraining.main(list(map(str, [*FAST, "--data-dir", data, "--epochs", 2])))
        out = capsys.readouterr().out
        assert "cached on the device" in out
        lines.append([re.sub(r"\| \d+s", "", line) for line in out.splitlines() if line.startswith("epoch ")])
    assert len(lines[0]) == 2 and lines[0] == lines[1]


def test_shards_on_a_web_server_train_as_on_disk(prepared, tmp_path):
    """An object store stands in: the shards folder served over HTTP (remote.py reads it with curl)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=prepared)
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        threading.Thread(target=server.serve_forever, args=(SERVER_POLL,), daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}/shards"
        for where, data in (("web", url), ("disk", os.path.join(prepared, "shards"))):
            os.makedirs(tmp_path / where)
            r = run("AItraining.py", *FAST, "--data-dir", data, "--epochs", 1, "--cache-gb", 0, cwd=tmp_path / where)
            assert r.returncode == 0, r.stdout + r.stderr
        server.shutdown()
    web, disk = (model_file.read_checkpoint(str(tmp_path / w / "skin_model.pth"))["meta"] for w in ("web", "disk"))
    assert web["val_metrics"] == disk["val_metrics"] and web["data"]["counts"] == disk["data"]["counts"]


def stream(prepared, rank=0, world=1, num_workers=0):
    sharded = os.path.join(prepared, "shards")
    classes = dataset.classes_of(dataset.read_manifest(sharded))[0]
    names, labels = splits.split_photos(sharded, "train", classes)
    crops = photos.Photos(names, 40, 1.0, "bicubic")
    return shards.Stream(sharded, "train", crops, labels, num_workers, torch.device("cpu"), rank, world), crops


def epoch_of(split, seed, rank=0, world=1, batch_size=8):
    g = torch.Generator().manual_seed(seed)
    return [(i, x, y) for i, x, y in split.epoch(batch_size, g, rank, world)]


def test_a_stream_decodes_as_the_cache_and_its_order_is_set_by_the_seed(prepared):
    split, crops = stream(prepared, num_workers=1)
    crops.blobs = splits.read_blobs(os.path.join(prepared, "shards"), "train")
    batches = epoch_of(split, 1)
    indices = [i for b, _, _ in batches for i in b]
    assert len(batches) == len(split.paths) // 8 and len(set(indices)) == len(indices) == len(batches) * 8
    for b, x, y in batches:  # the crops and labels of the photos, as the cached path decodes them
        assert torch.equal(x, torch.stack([torch.from_numpy(crops[i][0]) for i in b]))
        assert torch.equal(y, split.labels[b])
    assert [b for b, _, _ in epoch_of(split, 1)] == [b for b, _, _ in batches]  # same seed: same order
    assert [b for b, _, _ in epoch_of(split, 2)] != [b for b, _, _ in batches]


def test_each_process_reads_its_own_shards(prepared, capsys):
    read = {}
    for rank in (0, 1):
        split = stream(prepared, rank, 2)[0]
        batches = epoch_of(split, 3, rank, 2, batch_size=4)
        read[rank] = {i for b, _, _ in batches for i in b}
        assert len(batches) == len(split.paths) // 2 // 4  # the same number of steps on both
    shard_lines = dict(re.findall(r"rank (\d)/2: reads train shards (.*)", capsys.readouterr().out))
    first, second = (set(shard_lines[r].split(", ")) for r in ("0", "1"))
    assert not first & second and len(first | second) == len(split.sources)
    assert not read[0] & read[1]


def broken_copy(prepared, tmp_path, change):
    """The prepared dataset's shards copied, with change(shards folder, its index, the first train shard)."""
    sharded = shutil.copytree(os.path.join(prepared, "shards"), tmp_path / "shards")
    index = read_json(sharded / shard_format.INDEX)
    change(sharded, index, sharded / index["splits"]["train"]["shards"][0]["name"])
    return sharded


def truncate(path, keep=0.5):
    os.truncate(path, int(os.path.getsize(path) * keep))


def truncated_listed_whole(sharded, index, first):
    """Truncated, and the index says its new size: the size check passes, reading finds it."""
    truncate(first)
    index["splits"]["train"]["shards"][0]["bytes"] = os.path.getsize(first)
    with open(sharded / shard_format.INDEX, "w") as f:
        json.dump(index, f)


@pytest.mark.parametrize(
    "change, cache_gb, expected",
    [
        (lambda s, i, first: os.remove(first), 2, "train-000000.tar is missing: copy the shards again"),
        (lambda s, i, first: truncate(first), 0, "train-000000.tar has "),
        (truncated_listed_whole, 2, "train-000000.tar cannot be read"),
        (truncated_listed_whole, 0, "train-000000.tar cannot be read"),
    ],
    ids=["missing", "truncated", "truncated-read-cached", "truncated-read-streamed"],
)
def test_a_missing_or_truncated_shard_is_one_line_not_a_hang(prepared, tmp_path, change, cache_gb, expected):
    sharded = broken_copy(prepared, tmp_path, change)
    r = run("AItraining.py", *FAST, "--data-dir", sharded, "--cache-gb", cache_gb, cwd=tmp_path, timeout=300)
    assert_one_error(r.returncode, r.stderr, expected)
    assert not os.path.exists(tmp_path / "skin_model.pth")


def test_evaluate_scores_a_split_of_shards_as_its_folder(prepared, tmp_path):
    save_model(tmp_path / "m.pth", size=32)
    results = []
    for name, data in (
        ("from_folder", os.path.join(prepared, "test")),
        ("from_shards", os.path.join(prepared, "shards", "test")),
    ):
        os.makedirs(tmp_path / name)
        r = run("evaluate.py", "--model", tmp_path / "m.pth", "--data-dir", data, "--output-dir", tmp_path / name,
                "--n-bootstrap", 0, cwd=tmp_path)  # fmt: skip
        assert r.returncode == 0, r.stdout + r.stderr
        results.append(read_json(tmp_path / name / "evaluation.json"))
    for key in ("n_images", "metrics", "calibration", "subgroups"):
        assert results[0][key] == results[1][key], key
    sharded = broken_copy(prepared, tmp_path, lambda s, index, first: os.remove(s / "test-000001.tar"))
    r = run("evaluate.py", "--model", tmp_path / "m.pth", "--data-dir", sharded / "test", "--output-dir", tmp_path,
            cwd=tmp_path)  # fmt: skip
    assert_one_error(r.returncode, r.stderr, "test-000001.tar is missing: copy the shards again")


# ---------------------------------------------------------------------------- two machines under torchrun
def launchers(data, tmp_path, port, *extra):
    """Two torchrun launchers, node ranks 0 and 1, one process each, meeting on 127.0.0.1:port."""
    return [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes=2",
                "--nproc-per-node=1",
                f"--node-rank={node}",
                "--master-addr=127.0.0.1",
                f"--master-port={port}",
                os.path.join(ROOT, "AItraining.py"),
                *map(str, FAST),
                *map(str, ["--data-dir", data, "--cache-gb", 0, "--epochs", 3, *extra]),
            ],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=ENV,
            start_new_session=True,
        )
        for node in (0, 1)
    ]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children(pid):
    """The ids of a process's children (Linux /proc)."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry))
        except OSError:
            continue
    return found


def shards_read(out, epoch):
    """{rank: set of train shards} read in an epoch (the epoch-th time each rank said so)."""
    found = {}
    for rank, names in re.findall(r"rank (\d)/2: reads train shards (.*)", out):
        found.setdefault(rank, []).append(set(names.split(", ")))
    return {rank: lists[epoch - 1] for rank, lists in found.items() if len(lists) >= epoch}


def test_torchrun_two_machines_train_from_shards_and_a_killed_run_resumes(prepared, tmp_path):
    sharded = os.path.join(prepared, "shards")
    train_shards = {
        s["name"] for s in read_json(os.path.join(sharded, shard_format.INDEX))["splits"]["train"]["shards"]
    }
    last, curves = tmp_path / "skin_model_last.pth", tmp_path / "training_curves.png"
    procs = launchers(sharded, tmp_path, free_port())
    deadline = time.time() + 400
    while not curves.exists() and time.time() < deadline and all(p.poll() is None for p in procs):
        time.sleep(0.1)  # until epoch 1 is all written (its curves come last): the kill lands past it
    for p in procs:  # the training processes die at once (torchrun starts them in sessions of their own)
        for pid in children(p.pid):
            os.kill(pid, signal.SIGKILL)
    killed = "".join(p.communicate(timeout=120)[0] for p in procs)
    assert last.exists(), killed
    epoch_one = shards_read(killed, 1)
    assert set(epoch_one) == {"0", "1"} and not epoch_one["0"] & epoch_one["1"], killed  # each its own shards
    assert epoch_one["0"] | epoch_one["1"] == train_shards

    procs = launchers(sharded, tmp_path, free_port(), "--resume")
    outs = [p.communicate(timeout=500)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "".join(outs)
    resumed = "after epoch 1 of 3" in outs[0] or "after epoch 2 of 3" in outs[0]
    assert resumed and "resuming" not in outs[1], outs  # only rank 0 reports
    weights = dict(re.findall(r"rank (\d)/2: final weights (\w+)", "".join(outs)))
    assert set(weights) == {"0", "1"} and weights["0"] == weights["1"]  # DDP kept the replicas equal
    epochs = re.findall(r"^epoch +(\d)", outs[0], re.M)
    assert epochs[-1] == "3" and not re.findall(r"^epoch ", outs[1], re.M)
    if "after epoch 1 of 3" in outs[0] and len(shards_read(killed, 2)) == 2:  # epoch 2 replayed: the same shards
        assert shards_read(outs[0] + outs[1], 1) == shards_read(killed, 2)
    written = sorted(os.listdir(tmp_path))  # only rank 0 wrote, each file once, no temporary files left
    ours = [".skin-lesion-classifier", "runs", "skin_model.md", "skin_model.pth", "skin_model_last.pth"]
    assert written == [*ours, "training_curves.png"]  # (the first: the record of what the scripts wrote here)
    assert len(glob.glob(str(tmp_path / "runs" / "*"))) == 1  # one run's folder (beside our mark)
    assert pd.read_csv(os.path.join(sharded, dataset.MANIFEST)).split.isin(dataset.SPLITS).all()
