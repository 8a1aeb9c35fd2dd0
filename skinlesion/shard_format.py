"""What a shards folder holds, and each part of it checked as the model file is (schema.py): the index
(shards.json: each split's shards, their sizes and photos, the classes) against its shape and against itself, and
each shard, a tar file of three members per photo (<key>.<ext of its file>: its bytes; .cls: its class index;
.json: its ids, split, label and file), against the index, in order; a name in the index is data, read only as a
plain file name (it never reaches a shell), and a stray member of a shard is one error line. Written by
prepare_dataset.py --shards with the standard library (no torch needed there); read by shards.py."""

import contextlib
import io
import json
import os
import re
import shutil
import tarfile

from skinlesion import dataset, photos, reading, remote, schema
from skinlesion.files import file_kind
from skinlesion.messages import UserError, printable

INDEX = "shards.json"  # the index of a shards folder
FOLDER = "shards"  # where prepare_dataset.py --shards writes them, inside DATASET_DIR
MAX_INDEX_BYTES = 1_000_000_000  # the largest index read (400,000 photos: about 40 MB)
MAX_ABOUT_BYTES = 100_000  # the largest .cls or .json member of a shard
FIX = "copy the shards again or re-run prepare_dataset.py --shards"

# the index, checked as the model file is (schema.py): a name in it is data, read only as these patterns allow
PLAIN = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,150}"  # a plain file name: no separator, no shell character, no leading dot
SHARD_NAME = schema.simple(lambda v: isinstance(v, str) and re.fullmatch(PLAIN + r"\.tar", v) is not None,
                           "a plain file name ending in .tar (letters, digits, _ . -)")  # fmt: skip
KEY = schema.simple(lambda v: isinstance(v, str) and re.fullmatch(r"[A-Za-z0-9_-]{1,100}", v) is not None,
                    "a photo's key (letters, digits, _ -)")  # fmt: skip
FILE = schema.simple(lambda v: isinstance(v, str) and re.fullmatch(rf"(?:{PLAIN}/){{0,8}}{PLAIN}", v) is not None
                     and ".." not in v.split("/"), "a relative path of plain names")  # fmt: skip
MANY = 10**7
SPLIT_ENTRY = schema.record(dict(
    shards=schema.list_of(schema.record(dict(name=SHARD_NAME, samples=schema.whole(1, MANY),
                                             bytes=schema.whole(1, 10**13))), most=MANY),
    keys=schema.list_of(KEY, most=MANY), files=schema.list_of(FILE, most=MANY),
    labels=schema.list_of(schema.text(schema.MAX_NAME), most=MANY)))  # fmt: skip
INDEX_SHAPE = schema.record(dict(format=schema.one_of("webdataset"), classes=schema.NAMES,
                                 splits=schema.table_of(SPLIT_ENTRY, most=len(dataset.SPLITS))))  # fmt: skip
TEXT = schema.simple(lambda v: isinstance(v, str), "text")
ABOUT = schema.record(dict(isic_id=KEY, split=schema.one_of(*dataset.SPLITS), label=schema.text(schema.MAX_NAME),
                           file=FILE), dict(lesion_id=TEXT, patient_id=TEXT))  # fmt: skip


def location(data_dir, name):
    if remote.is_remote(data_dir):
        return data_dir.rstrip("/") + "/" + name
    return os.path.join(data_dir, name)


def read_index(data_dir):
    """The index of a shards folder, checked against its shape (INDEX_SHAPE) and itself; a local shard that is
    missing, not a regular file or not the size the index gives raises UserError, in one line (a truncated copy
    is found before any work)."""
    where = location(data_dir, INDEX)
    try:
        if remote.is_remote(data_dir):
            data = remote.read_all(where, MAX_INDEX_BYTES)
        else:
            data = reading.read_bytes(where, MAX_INDEX_BYTES)
        index = reading.parse_json(data, where)
    except OSError as e:  # a network failure says what to check; a local file, how to make it again
        raise UserError(
            str(e) if remote.is_remote(data_dir) else f"{e}; make the shards with prepare_dataset.py --shards"
        ) from None
    why = schema.fault(INDEX_SHAPE, "index", index) or index_fault(index)
    if why:
        raise UserError(f"{printable(where)} is not an index prepare_dataset.py --shards wrote: {why}; {FIX}")
    for split in index["splits"].values():
        for shard in split["shards"] if not remote.is_remote(data_dir) else []:
            path = location(data_dir, shard["name"])
            kind = file_kind(path)
            size = os.path.getsize(path) if kind is None else None
            if size != shard["bytes"]:
                found = {"missing": "is missing", None: f"has {size} bytes, the index says {shard['bytes']}"}
                raise UserError(f"shard {printable(path)} {found.get(kind, f'is {kind}')}: {FIX}")
    return index


def index_fault(index):
    """What in an index of the right shape does not agree with itself (its splits, lists, counts, labels), or
    None."""
    for split, entry in index["splits"].items():
        lengths = {
            len(entry["keys"]),
            len(entry["files"]),
            len(entry["labels"]),
            sum(s["samples"] for s in entry["shards"]),
        }
        if split not in dataset.SPLITS:
            return f"its split {split!r} is none of {', '.join(dataset.SPLITS)}"
        if len(lengths) > 1:
            return f"its {split} keys, files, labels and shards count {sorted(lengths)} photos: not one number"
        if len(set(entry["keys"])) < len(entry["keys"]) or len(set(entry["files"])) < len(entry["files"]):
            return f"its {split} split lists a photo twice"
        if not set(entry["labels"]) <= set(index["classes"]):
            return f"its {split} labels {sorted(set(entry['labels']) - set(index['classes']))[:3]} are not its classes"
    return None


def split_entry(data_dir, split):
    """The index's entry of a split (shards, files, labels), with the index's classes; raises UserError when
    the shards lack it."""
    index = read_index(data_dir)
    splits = index["splits"]
    if split not in splits:
        found = ", ".join(splits) or "none"
        raise UserError(
            f"{printable(data_dir)} has no {split} shards (it has {found}); re-run prepare_dataset.py --shards"
        )
    return dict(splits[split], classes=index["classes"])


def sources_of(data_dir, entry):
    """The shards of a split's index entry, each with what it must hold, in order: its url, photos (samples) and
    per photo its key, file and class index."""
    sources, start = [], 0
    for shard in entry["shards"]:
        end = start + shard["samples"]
        labels = [entry["classes"].index(label) for label in entry["labels"][start:end]]
        sources.append(dict(url=location(data_dir, shard["name"]), samples=shard["samples"], bytes=shard["bytes"],
                            keys=entry["keys"][start:end], files=entry["files"][start:end], labels=labels))  # fmt: skip
        start = end
    return sources


def shard_samples(sources):
    """The samples of shards (sources_of's dicts: url, samples, keys, files, labels), read with the standard
    library and checked against the index: each photo's three members (<key>.<ext of its file>, .cls, .json), in
    order, of the size a member may have, saying what the index says. A shard that cannot be read, ends early or
    holds anything else gives an error sample (its '__error__' says so, in one line) and the stream stops."""
    for source in sources:
        try:
            seen = yield from checked_samples(source)
        except Exception as e:  # tarfile.ReadError, OSError, ...: whatever the cause, the shard is unusable
            why = str(e) if isinstance(e, OSError) and not e.errno else f"{type(e).__name__}: {e}"
            if printable(source["url"]) not in why:
                why = f"shard {printable(source['url'])} cannot be read ({why})"
            yield {"__error__": printable(why)}
            return
        if seen != source["samples"]:
            where, listed = printable(source["url"]), source["samples"]
            yield {"__error__": f"shard {where} ends after {seen} of its {listed} photos: it is truncated"}
            return


def opened_shard(url, size):
    """A shard's file to read: a regular file of the size its index gives, or the file at an address."""
    if remote.is_remote(url):
        return remote.Reader(url)
    return reading.open_regular(url, size)


def checked_samples(source):
    """The samples of one shard, each checked (shard_samples); returns how many; OSError names a stray member."""
    seen, members = 0, {}
    with opened_shard(source["url"], source["bytes"]) as f, tarfile.open(fileobj=f, mode="r|") as tar:
        for member in tar:
            if seen == source["samples"]:
                raise stray(source, member.name, "after its last photo")
            key, ext = member.name.partition(".")[::2]
            wanted_key, photo_ext = source["keys"][seen], os.path.splitext(source["files"][seen])[1].lower()[1:]
            most = photos.MAX_PHOTO_BYTES if ext == photo_ext else MAX_ABOUT_BYTES
            if key != wanted_key or ext not in (photo_ext, "cls", "json") or ext in members:
                raise stray(source, member.name, f"where {wanted_key}'s photo, .cls or .json belongs")
            if not member.isreg() or member.size > most:
                raise stray(source, member.name, "not a file of the size a member may have")
            members[ext] = tar.extractfile(member).read()
            if len(members) == 3:
                yield checked_sample(source, seen, members)
                seen, members = seen + 1, {}
    if members:
        raise stray(source, f"{source['keys'][seen]}.*", "a photo without all three of its members")
    return seen


def checked_sample(source, i, members):
    """The sample of the i-th photo of a shard from its members, once its .cls and .json say what the index says."""
    key, file, label = source["keys"][i], source["files"][i], source["labels"][i]
    try:
        about = json.loads(members["json"])
    except (ValueError, RecursionError):
        about = None
    if (
        members["cls"] != str(label).encode()
        or schema.fault(ABOUT, "json", about)
        or (about["isic_id"], about["file"]) != (key, file)
    ):
        raise stray(source, f"{key}.cls/.json", "not what the index says of the photo")
    return {"__key__": key, "__url__": source["url"], **members}


def stray(source, name, why):
    return OSError(f"shard {printable(source['url'])} holds a stray member {printable(name)} ({why})")


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
    copy of the manifest; returns what was written, as a line for the summary. A failed write (a full disk) is
    one line naming the file and the flags."""
    out = os.path.join(folder, FOLDER)
    os.makedirs(out)
    classes = dataset.classes_of(manifest)[0]
    index = dict(format="webdataset", classes=classes, splits={})
    for split in [s for s in dataset.SPLITS if s in set(manifest.split)]:
        index["splits"][split] = write_split(folder, manifest[manifest.split == split], split, classes, shard_mb)
    with written(os.path.join(out, dataset.MANIFEST)) as path:
        shutil.copyfile(os.path.join(folder, dataset.MANIFEST), path)
    with written(os.path.join(out, INDEX)) as path, open(path, "w") as f:
        json.dump(index, f)
    counts = ", ".join(f"{split} {len(e['shards'])}" for split, e in index["splits"].items())
    total = sum(shard["bytes"] for entry in index["splits"].values() for shard in entry["shards"])
    return f"shards: {counts} ({total / 1e6:.1f} MB) in {FOLDER}/ (train with --data-dir <dataset>/{FOLDER})"


def write_split(folder, rows, split, classes, shard_mb):
    """Write a split's shards into folder/shards/; returns its index entry."""
    from tqdm import tqdm

    rows = rows.assign(order=rows.label.map(classes.index)).sort_values(["order", "file"])
    entry = dict(shards=[], keys=list(rows.isic_id), files=list(rows.file), labels=list(rows.label))
    sizes = [os.path.getsize(os.path.join(folder, file)) + 2560 for file in rows.file]  # with tar headers
    for k, group in enumerate(tqdm(shard_groups(sizes, shard_mb * 1e6), desc=f"shards {split}", disable=None)):
        name = f"{split}-{k:06d}.tar"
        with written(os.path.join(folder, FOLDER, name)) as path:
            with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
                for row in rows.iloc[group].itertuples():
                    with open(os.path.join(folder, row.file), "rb") as f:
                        data = f.read()
                    ids = dict(isic_id=row.isic_id, lesion_id=row.lesion_id, patient_id=row.patient_id)
                    about = dict(ids, split=split, label=row.label, file=row.file)
                    add_file(tar, row.isic_id + os.path.splitext(row.file)[1].lower(), data)
                    add_file(tar, row.isic_id + ".cls", str(classes.index(row.label)).encode())
                    add_file(tar, row.isic_id + ".json", json.dumps(about).encode())
            entry["shards"].append(dict(name=name, samples=len(group), bytes=os.path.getsize(path)))
    return entry


@contextlib.contextmanager
def written(path):
    """with written(path) as path: write it; an OSError (a full disk, a quota) is one line naming the file and the
    flags."""
    try:
        yield path
    except OSError as e:
        raise UserError(
            f"could not write {printable(path)} ({e.strerror or e}); free some disk space or pass another "
            "--dataset-dir (--shards writes every photo a second time)"
        ) from None
