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
import itertools
import random

import numpy as np

from skinlesion import photos, shard_format, splits
from skinlesion.messages import UserError, printable

SHUFFLE_BUFFER = 2000  # photos a streaming worker shuffles among (each 256 px JPEG: ~20 KB)
CHUNK = 32  # photos a worker decodes and sends at a time


def decoded_chunks(samples, index, crops):
    """(indices, uint8 crops (n, 3, size, size), whys) of CHUNK samples at a time, decoded as photos.Photos
    decodes files; an error sample ends the stream with index -1 and its error as the why."""
    import torch

    chunk = []
    for sample in itertools.chain(samples, [None]):
        if sample is not None and "__error__" not in sample:
            key = sample["__key__"]
            one = photos.Photos(
                [key], crops.size, crops.crop_pct, crops.interpolation, {key: sample[splits.image_key(sample)]}
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

        entry = shard_format.split_entry(data_dir, split)
        self.sources = shard_format.sources_of(data_dir, entry)
        self.index = {key: i for i, key in enumerate(entry["keys"])}
        self.paths, self.crops, self.num_workers, self.device = crops.paths, crops, num_workers, device
        self.labels, self.rank, self.world, self.split = torch.as_tensor(labels, device=device), rank, world, split
        if split == "train" and len(self.sources) < world:
            raise UserError(
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
            functools.partial(with_sources, sources={s["url"]: s for s in self.sources}),
            shard_format.shard_samples,
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
                    raise OSError(f"{named}{why}; {shard_format.FIX}")
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


def with_sources(urls, sources):
    """WebDataset's shard dicts {url} with what the index says each holds (shard_format.sources_of)."""
    for source in urls:
        yield sources[source["url"]]
