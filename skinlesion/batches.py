"""The training data path (AItraining.py, bench.py): a split's photos decoded once into a uint8 cache on the
training device, or streamed by DataLoader workers, and augmented on the device per batch."""

import math

from skinlesion.photos import normalise_batch, photo_loader


def checked_crops(batches, paths):
    """The uint8 crops of (indices, (crops, whys)) batches of Photos; raises OSError at a photo that cannot be
    read, naming it."""
    for indices, (x, whys) in batches:
        for i, why in zip(indices, whys):
            if why:
                raise OSError(f"{paths[i]} is {why}; delete it or re-run prepare_dataset.py")
        yield x


class Split:
    """A split's uint8 crops on the training device: decoded once into a cache (when cached) or streamed by
    persistent DataLoader workers every pass. batches(order) gives the same tensors either way."""

    def __init__(self, photos, labels, cached, num_workers, device, desc):
        import torch
        from tqdm import tqdm

        self.paths, self.device, self.order = photos.paths, device, []
        self.labels = torch.as_tensor(labels, device=device)
        self.loader = photo_loader(photos, self.order, num_workers, device)
        self.cache = None
        if cached:
            self.order[:] = [list(range(i, min(i + 64, len(photos)))) for i in range(0, len(photos), 64)]
            crops = checked_crops(zip(self.order, self.loader), self.paths)
            progress = tqdm(crops, desc=desc, total=len(self.order), leave=False, disable=None)
            self.cache = torch.cat([x.to(device) for x in progress])
            self.loader = None  # decoded once: its workers need not wait for the rest of the run

    def batches(self, order):
        """(indices, uint8 crops, labels) for each list of indices in order."""
        import torch

        order = list(order)
        self.order[:] = order
        if self.cache is not None:
            crops = (self.cache[torch.tensor(b, device=self.device)] for b in order)
        else:
            crops = checked_crops(zip(order, self.loader), self.paths)
        for b, x in zip(order, crops):
            yield b, x.to(self.device, non_blocking=True), self.labels[b]

    def epoch(self, batch_size, generator, rank=0, world=1, order=None):
        """(indices, uint8 crops, labels) of this process's batches of one epoch: a permutation of the photos
        from generator (or the given order), this process's share of it in full batches (all of it when it
        holds fewer than two batches' worth, as a tiny data set does); the same number of steps everywhere."""
        import torch

        if order is None:
            order = torch.randperm(len(self.paths), generator=generator)
        else:
            order = torch.as_tensor(order)
        steps = len(order) // world // batch_size
        order = order[rank::world].tolist()
        if len(order) > batch_size:
            return self.batches([order[i * batch_size : (i + 1) * batch_size] for i in range(steps)])
        return self.batches([order])

    def own_batches(self, rank, world, batch_size):
        """(indices, uint8 crops, labels) of this process's share of the photos, in order (validation)."""
        share = list(range(rank, len(self.paths), world))
        return self.batches([share[i : i + batch_size] for i in range(0, len(share), batch_size)])


def train_batches(split, batch_size, cfg, generator, generator_device, rank=0, world=1, order=None):
    """One epoch of augmented, normalised training batches (x, y) of a Split (or a shards.Stream): this
    process's batches of the epoch (Split.epoch), augmented on the device with generator_device."""
    for _, x, y in split.epoch(batch_size, generator, rank, world, order):
        yield normalise_batch(augment(x, generator_device, cfg["input_size"][-1]), cfg), y


def augment(x, generator, size):
    """Per-sample augmentation of a uint8 batch (B, 3, M, M) on its device: floats in [0, 1], (B, 3, size, size).
    Random resized crop (50-100% of the area, aspect 3/4 to 4/3, anywhere), any rotation and both flips as one
    affine_grid + grid_sample (bilinear, reflection at the borders), then brightness, contrast and saturation
    each times 0.8-1.2."""
    import torch
    import torch.nn.functional as F

    def uniform(low, high):
        return torch.rand(len(x), generator=generator, device=x.device) * (high - low) + low

    def sign():
        return torch.where(uniform(0, 1) < 0.5, -1.0, 1.0)

    def factor():
        return uniform(0.8, 1.2)[:, None, None, None]

    def grey(x):
        weights = torch.tensor([0.299, 0.587, 0.114], device=x.device)[:, None, None]
        return (x * weights).sum(1, keepdim=True)

    area, aspect = uniform(0.5, 1.0), torch.exp(uniform(math.log(3 / 4), math.log(4 / 3)))
    sx, sy = (area * aspect).sqrt().clamp(max=1), (area / aspect).sqrt().clamp(max=1)  # half-sizes in [-1, 1] units
    tx, ty = (1 - sx) * uniform(-1, 1), (1 - sy) * uniform(-1, 1)  # the crop's centre, anywhere it fits
    sx, sy = sx * sign(), sy * sign()  # flips
    angle = uniform(0, 2 * math.pi)
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack([torch.stack([cos * sx, -sin * sy, tx], 1), torch.stack([sin * sx, cos * sy, ty], 1)], 1)
    grid = F.affine_grid(theta, [len(x), 3, size, size], align_corners=False)
    x = F.grid_sample(x.float() / 255, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    x = (x * factor()).clamp(0, 1)  # brightness
    mean = grey(x).mean((2, 3), keepdim=True)
    x = ((x - mean) * factor() + mean).clamp(0, 1)  # contrast
    luma = grey(x)
    return (luma + (x - luma) * factor()).clamp(0, 1)  # saturation
