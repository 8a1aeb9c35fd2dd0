"""Where a split's photos come from: the class folders of a prepared dataset (dataset/<split>/<class>/), or its
shards (dataset/shards/, on a disk or in an object store: shard_format.py), read the same way by AItraining.py,
evaluate.py and the familiarity check. A split of shards is named as its folder is: dataset/shards/test."""

import os

import numpy as np

from skinlesion import dataset, photos, remote, shard_format
from skinlesion.messages import UserError, printable, warn


def is_shards(data_dir):
    """Whether data_dir is a shards folder (holds an index, whatever it is: reading it says), or a location in an
    object store."""
    return remote.is_remote(data_dir) or os.path.lexists(os.path.join(str(data_dir), shard_format.INDEX))


def is_split(path):
    """Whether path names a split of a shards folder: dataset/shards/test, as dataset/test names a folder."""
    parent, split = os.path.split(str(path).rstrip("/"))
    return split in dataset.SPLITS and not os.path.isdir(path) and is_shards(parent)


def has_split(data_dir, split):
    """Whether a prepared dataset holds the split: its folder, or its shards' entry."""
    if is_shards(data_dir):
        return split in shard_format.read_index(data_dir)["splits"]
    return os.path.isdir(os.path.join(data_dir, split))


def split_photos(data_dir, split, classes):
    """(photo paths, class indices) of data_dir/split, checked by dataset.class_folders; other files skipped,
    counted. A shards folder's come from its index (shard_photos)."""
    if is_shards(data_dir):
        return shard_photos(data_dir, split, classes)
    class_files, others = dataset.class_folders(os.path.join(data_dir, split), f"{split} folder", classes)
    if others:
        warn(f"{printable(os.path.join(data_dir, split))}: {len(others)} file(s) that are not images skipped")
    paths = [f for c in classes for f in class_files[c]]
    return paths, np.array([i for i, c in enumerate(classes) for _ in class_files[c]])


def shard_photos(data_dir, split, classes):
    """(photo names, class indices) of a split's shards, in the folders' order: the names are the photos' paths
    as the class folders beside the shards hold them (data_dir/<split>/<class>/<file>)."""
    entry = shard_format.split_entry(data_dir, split)
    unknown = sorted(set(entry["labels"]) - set(classes))
    if unknown:
        raise UserError(
            f"{printable(data_dir)}: {split} shards hold classes {unknown} that its manifest lacks; re-run "
            "prepare_dataset.py --shards"
        )
    names = [shard_format.location(data_dir, file) for file in entry["files"]]
    return names, np.array([classes.index(label) for label in entry["labels"]])


def class_files(path, classes):
    """({class: photos}, other files) of one split, named by its path: its class folders (dataset.class_folders),
    or its shards (dataset/shards/test)."""
    if not is_split(path):
        return dataset.class_folders(path, classes=classes)
    data_dir, split = os.path.split(str(path).rstrip("/"))
    names, labels = shard_photos(data_dir, split, classes)
    return {c: [n for n, label in zip(names, labels) if label == i] for i, c in enumerate(classes)}, []


def read_blobs(data_dir, split, wanted=None):
    """{photo name: its bytes} of every photo of a split of shards (read whole: the cache, evaluate.py), or only of
    the names in wanted (a set); a shard that is missing, truncated or unreadable raises UserError, in one line."""
    entry, blobs = shard_format.split_entry(data_dir, split), {}
    sources = shard_format.sources_of(data_dir, entry)
    files = {key: file for source in sources for key, file in zip(source["keys"], source["files"])}
    for sample in shard_format.shard_samples(sources):
        if "__error__" in sample:
            raise UserError(sample["__error__"] + f"; {shard_format.FIX}")
        name = shard_format.location(data_dir, files[sample["__key__"]])
        if wanted is None or name in wanted:
            blobs[name] = sample[image_key(sample)]
    return blobs


def split_blobs(path):
    """{photo name: its bytes} of a split of shards (dataset/shards/test), None for a folder."""
    if not is_split(path):
        return None
    return read_blobs(*os.path.split(str(path).rstrip("/")))


def image_key(sample):
    """The member of a shard's sample that holds the photo's bytes (named by its file's extension)."""
    return next(key for key in sample if "." + key in photos.IMAGE_EXTS)
