"""A prepared dataset as WebDataset shards (tar files of the 256 px JPEG bytes, the class and the ids of each
photo) for training across machines that share no disk, or from an object store: prepare_dataset.py --shards
writes them into dataset/shards/ beside the class folders, with an index (shards.json: each split's shards,
their sizes and photos) and a copy of manifest.csv, which stays the record of which photo is in which split.

AItraining.py --data-dir dataset/shards and evaluate.py --data-dir dataset/shards/test read them as they read
the folders. A split that fits CACHE_GB is read whole into the device cache, in the folders' order (the same
run as from the folders); a larger one is streamed: every epoch the shards are shuffled with (SEED, epoch),
each torchrun process reads its own of them (split among its DataLoader workers), photos shuffled in a buffer.
A shard that is missing, truncated or unreadable is one error line, never a hang."""

import functools
import io
import itertools
import json
import os
import random
import shutil
import tarfile

import numpy as np

from skinlesion import dataset, photos
from skinlesion.cli import die, printable

INDEX = "shards.json"  # the index of a shards folder
FOLDER = "shards"  # where prepare_dataset.py --shards writes them, inside DATASET_DIR
SHUFFLE_BUFFER = 2000  # photos a streaming worker shuffles among (each 256 px JPEG: ~20 KB)
CHUNK = 32  # photos a worker decodes and sends at a time


def is_remote(path):
    """An object-store or web location WebDataset's gopen reads (pipe:, http(s)://, gs://, ...)."""
    return "://" in str(path) or str(path).startswith("pipe:")


def location(data_dir, name):
    if is_remote(data_dir):
        return data_dir.rstrip("/") + "/" + name
    return os.path.join(data_dir, name)


def is_shards(data_dir):
    """Whether data_dir is a shards folder (holds an index), or a location in an object store."""
    return is_remote(data_dir) or os.path.isfile(os.path.join(str(data_dir), INDEX))


def is_split(path):
    """Whether path names a split of a shards folder: dataset/shards/test, as dataset/test names a folder."""
    parent, split = os.path.split(str(path).rstrip("/"))
    return split in dataset.SPLITS and not os.path.isdir(path) and is_shards(parent)


def remote_manifest(data_dir):
    """The manifest beside shards in an object store, as strings (dataset.read_manifest)."""
    import pandas as pd
    import webdataset as wds

    try:
        with wds.gopen(location(data_dir, dataset.MANIFEST)) as f:
            return pd.read_csv(f, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as e:
        die(f"{printable(location(data_dir, dataset.MANIFEST))} cannot be read ({e}); copy the shards folder whole")


def read_index(data_dir):
    """The index of a shards folder; a local shard that is missing or not the size the index gives dies with
    one line (a truncated copy is found before any work)."""
    import webdataset as wds

    try:
        with wds.gopen(location(data_dir, INDEX)) as f:
            index = json.load(f)
    except (OSError, ValueError) as e:
        where = printable(location(data_dir, INDEX))
        die(f"{where} cannot be read ({e}); make the shards with prepare_dataset.py --shards")
    for split in index["splits"].values():
        for shard in split["shards"] if not is_remote(data_dir) else []:
            path = location(data_dir, shard["name"])
            size = os.path.getsize(path) if os.path.isfile(path) else None
            if size != shard["bytes"]:
                found = "is missing" if size is None else f"has {size} bytes, the index says {shard['bytes']}"
                die(f"shard {printable(path)} {found}: copy the shards again or re-run prepare_dataset.py --shards")
    return index


def split_entry(data_dir, split):
    """The index's entry of a split (shards, files, labels); dies with one line when the shards lack it."""
    splits = read_index(data_dir)["splits"]
    if split not in splits:
        found = ", ".join(splits) or "none"
        die(f"{printable(data_dir)} has no {split} shards (it has {found}); re-run prepare_dataset.py --shards")
    return splits[split]


def split_photos(data_dir, split, classes):
    """(photo names, class indices) of a split's shards, in the folders' order: the names are the photos' paths
    as the class folders beside the shards hold them (data_dir/<split>/<class>/<file>)."""
    entry = split_entry(data_dir, split)
    unknown = sorted(set(entry["labels"]) - set(classes))
    if unknown:
        die(
            f"{printable(data_dir)}: {split} shards hold classes {unknown} that its manifest lacks; re-run "
            "prepare_dataset.py --shards"
        )
    names = [location(data_dir, file) for file in entry["files"]]
    return names, np.array([classes.index(label) for label in entry["labels"]])


def class_files(path, classes):
    """({class: photos}, other files) of a split: its class folders (dataset.class_folders), or its shards."""
    if not is_split(path):
        return dataset.class_folders(path, classes=classes)
    data_dir, split = os.path.split(str(path).rstrip("/"))
    names, labels = split_photos(data_dir, split, classes)
    return {c: [n for n, label in zip(names, labels) if label == i] for i, c in enumerate(classes)}, []


def shard_samples(sources):
    """WebDataset samples of shards ({url, samples} dicts), checked: a shard that cannot be read, or ends before
    the photos its index lists, gives an error sample (its '__error__' says so) and the stream stops."""
    import webdataset as wds

    for source in sources:
        seen = 0
        try:
            for sample in wds.tarfile_samples([dict(url=source["url"])]):
                seen += 1
                yield sample
        except Exception as e:  # tarfile.ReadError, OSError, ...: whatever the cause, the shard is unusable
            yield {"__error__": f"shard {printable(source['url'])} cannot be read ({type(e).__name__}: {e})"}
            return
        if seen != source["samples"]:
            where, listed = printable(source["url"]), source["samples"]
            yield {"__error__": f"shard {where} ends after {seen} of its {listed} photos: it is truncated"}
            return


def read_blobs(data_dir, split, wanted=None):
    """{photo name: its bytes} of every photo of a split (read whole: the cache, evaluate.py), or only of the names
    in wanted (a set); a shard that is missing, truncated or unreadable dies with one line."""
    entry, blobs = split_entry(data_dir, split), {}
    sources = [dict(url=location(data_dir, s["name"]), samples=s["samples"]) for s in entry["shards"]]
    for sample in shard_samples(sources):
        if "__error__" in sample:
            die(sample["__error__"] + "; copy the shards again or re-run prepare_dataset.py --shards")
        name = location(data_dir, json.loads(sample["json"])["file"])
        if wanted is None or name in wanted:
            blobs[name] = sample[image_key(sample)]
    return blobs


def split_blobs(path):
    """{photo name: its bytes} of a split of shards (dataset/shards/test), None for a folder."""
    if not is_split(path):
        return None
    return read_blobs(*os.path.split(str(path).rstrip("/")))


def image_key(sample):
    return next(key for key in sample if "." + key in photos.IMAGE_EXTS)


def decoded_chunks(samples, index, crops):
    """(indices, uint8 crops (n, 3, size, size), whys) of CHUNK samples at a time, decoded as photos.Photos
    decodes files; an error sample ends the stream with index -1 and its error as the why."""
    import torch

    chunk = []
    for sample in itertools.chain(samples, [None]):
        if sample is not None and "__error__" not in sample:
            key = sample["__key__"]
            one = photos.Photos(
                [key], crops.size, crops.crop_pct, crops.interpolation, {key: sample[image_key(sample)]}
            )
            crop, why = one[0]
            chunk.append((index[sample["__key__"]], crop, why))
        if chunk and (sample is None or "__error__" in sample or len(chunk) == CHUNK):
            i, x, whys = zip(*chunk)
            yield torch.tensor(i), torch.from_numpy(np.stack(x)), list(whys)
            chunk = []
        if sample is not None and "__error__" in sample:
            yield (
                torch.tensor([-1]),
                torch.zeros(1, 3, crops.size, crops.size, dtype=torch.uint8),
                [sample["__error__"]],
            )
            return


class Stream:
    """A split's shards streamed by DataLoader workers: what training.Split gives (epoch, own_batches) for a split
    that does not fit the cache, each process reading its own shards."""

    def __init__(self, data_dir, split, crops, labels, num_workers, device, rank=0, world=1):
        import torch

        entry = split_entry(data_dir, split)
        self.sources = [dict(url=location(data_dir, s["name"]), samples=s["samples"]) for s in entry["shards"]]
        self.index = {key: i for i, key in enumerate(entry["keys"])}
        self.paths, self.crops, self.num_workers, self.device = crops.paths, crops, num_workers, device
        self.labels, self.rank, self.world, self.split = torch.as_tensor(labels, device=device), rank, world, split
        if split == "train" and len(self.sources) < world:
            die(
                f"{printable(data_dir)} has {len(self.sources)} train shard(s) for {world} processes, each of which "
                "reads its own: re-run prepare_dataset.py --shards with a smaller --shard-mb"
            )

    def chunks(self, shards, seed, shuffle):
        """(indices, uint8 crops on the device) of the shards, read by the workers; an unreadable photo or shard
        raises OSError, naming it."""
        import torch
        import webdataset as wds

        stages = [
            wds.SimpleShardList([self.sources[i]["url"] for i in shards]),
            wds.split_by_worker,
            functools.partial(with_counts, samples={s["url"]: s["samples"] for s in self.sources}),
            shard_samples,
        ]
        if shuffle:
            stages.append(wds.shuffle(SHUFFLE_BUFFER, initial=SHUFFLE_BUFFER, rng=random.Random(seed)))
        stages.append(functools.partial(decoded_chunks, index=self.index, crops=self.crops))
        workers = min(self.num_workers, len(shards))
        loader = torch.utils.data.DataLoader(
            wds.DataPipeline(*stages), batch_size=None, num_workers=workers, worker_init_fn=photos.one_thread
        )
        for i, x, whys in loader:
            for j, why in zip(i.tolist(), whys):
                if why:
                    named = "" if j < 0 else f"{printable(self.paths[j])} is "
                    raise OSError(f"{named}{why}; copy the shards again or re-run prepare_dataset.py --shards")
            yield i, x.to(self.device, non_blocking=True)

    def rebatched(self, chunks, size, steps=None):
        """(indices, crops, labels) batches of size from chunks; steps of them (the last, short one too when
        steps is None and the chunks end)."""
        import torch

        kept, made = [], 0
        for chunk in itertools.chain(chunks, [None]):
            if chunk is not None:
                kept.append(chunk)
            held = sum(len(i) for i, _ in kept)
            while kept and (held >= size or chunk is None) and made != steps:
                i, x = torch.cat([i for i, _ in kept]), torch.cat([x for _, x in kept])
                yield i[:size].tolist(), x[:size], self.labels[i[:size]]
                kept, made, held = [(i[size:], x[size:])] if held > size else [], made + 1, held - size
            if made == steps:
                return

    def epoch(self, batch_size, generator, rank=0, world=1, order=None):
        """This process's (indices, uint8 crops, labels) batches of one epoch: its own shards of a shuffle drawn
        from generator (every process draws the same), their photos shuffled in a buffer; as many steps as
        training.Split gives on every process (a process whose shards hold fewer photos reads them again)."""
        import torch

        shards = torch.randperm(len(self.sources), generator=generator).tolist()[rank::world]
        seed = int(torch.randint(2**31, (1,), generator=generator)) + rank
        per_process = len(self.paths) // world
        size, steps = min(batch_size, per_process), max(per_process // batch_size, 1)
        if world > 1:
            names = ", ".join(self.sources[i]["url"].rsplit("/", 1)[-1] for i in sorted(shards))
            print(f"rank {rank}/{world}: reads {self.split} shards {names}", flush=True)
        passes = (self.chunks(shards, seed + 1000 * n, True) for n in itertools.count())
        return self.rebatched(itertools.chain.from_iterable(passes), size, steps)

    def own_batches(self, rank, world, batch_size):
        """(indices, uint8 crops, labels) of this process's own shards, in order (validation)."""
        return self.rebatched(self.chunks(list(range(rank, len(self.sources), world)), 0, False), batch_size)


def with_counts(urls, samples):
    """WebDataset's shard dicts {url} with the photos the index lists in each."""
    for source in urls:
        yield dict(source, samples=samples[source["url"]])


def open_split(data_dir, split, crops, labels, cached, num_workers, device, desc, rank=0, world=1):
    """A split to train or validate on: training.Split of a folder's photos, or of shards read whole when cached;
    a Stream of this process's shards when not."""
    from skinlesion import training

    if not is_shards(data_dir):
        return training.Split(crops, labels, cached, num_workers, device, desc)
    if not cached:
        return Stream(data_dir, split, crops, labels, num_workers, device, rank, world)
    crops.blobs = read_blobs(data_dir, split)
    return training.Split(crops, labels, cached, num_workers, device, desc)


def add_file(tar, name, data):
    """A file in a tar shard, dated 0 (the same photos give byte-identical shards)."""
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644
    tar.addfile(info, io.BytesIO(data))


def shard_groups(sizes, limit):
    """The positions of the files in each shard: in order, a new shard where the next file would pass limit."""
    groups, size = [], 0
    for i, n in enumerate(sizes):
        if not groups or size + n > limit:
            groups.append([])
            size = 0
        groups[-1].append(i)
        size += n
    return groups


def write_shards(folder, manifest, shard_mb):
    """Write folder/shards/: each split's photos (in the class folders' order) in tar shards of about shard_mb MB
    each (WebDataset's layout, written with the standard library: no torch needed here), with the index and a
    copy of the manifest; returns what was written, as a line for the summary."""
    from tqdm import tqdm

    out = os.path.join(folder, FOLDER)
    os.makedirs(out)
    classes = dataset.classes_of(manifest)[0]
    index, total = dict(format="webdataset", classes=classes, splits={}), 0
    for split in [s for s in dataset.SPLITS if s in set(manifest.split)]:
        rows = manifest[manifest.split == split]
        rows = rows.assign(order=rows.label.map(classes.index)).sort_values(["order", "file"])
        entry = dict(shards=[], keys=list(rows.isic_id), files=list(rows.file), labels=list(rows.label))
        sizes = [os.path.getsize(os.path.join(folder, file)) + 2560 for file in rows.file]  # with tar headers
        for k, group in enumerate(tqdm(shard_groups(sizes, shard_mb * 1e6), desc=f"shards {split}", disable=None)):
            entry["shards"].append(dict(name=f"{split}-{k:06d}.tar", samples=len(group)))
            with tarfile.open(os.path.join(out, entry["shards"][-1]["name"]), "w", format=tarfile.USTAR_FORMAT) as tar:
                for row in rows.iloc[group].itertuples():
                    with open(os.path.join(folder, row.file), "rb") as f:
                        data = f.read()
                    ids = dict(isic_id=row.isic_id, lesion_id=row.lesion_id, patient_id=row.patient_id)
                    about = dict(ids, split=split, label=row.label, file=row.file)
                    add_file(tar, row.isic_id + os.path.splitext(row.file)[1].lower(), data)
                    add_file(tar, row.isic_id + ".cls", str(classes.index(row.label)).encode())
                    add_file(tar, row.isic_id + ".json", json.dumps(about).encode())
        for shard in entry["shards"]:
            shard["bytes"] = os.path.getsize(os.path.join(out, shard["name"]))
            total += shard["bytes"]
        index["splits"][split] = entry
    shutil.copyfile(os.path.join(folder, dataset.MANIFEST), os.path.join(out, dataset.MANIFEST))
    with open(os.path.join(out, INDEX), "w") as f:
        json.dump(index, f)
    counts = ", ".join(f"{split} {len(e['shards'])}" for split, e in index["splits"].items())
    return f"shards: {counts} ({total / 1e6:.1f} MB) in {FOLDER}/ (train with --data-dir <dataset>/{FOLDER})"
