"""skinlesion/batches.py: the training data path: augmentation keeps labels and value ranges, each photo gets its
own draw, the same seed the same batch; an unreadable photo is an OSError naming it."""

import pytest
import torch

from skinlesion import batches


def test_augmentation_keeps_labels_and_value_ranges():
    """Dark photos stay darker than bright ones whatever the crop, rotation, flip and colour change; values stay
    in [0, 1]; each photo gets its own draw; the same seed gives the same batch."""
    x = torch.cat(
        [torch.full((8, 3, 64, 64), 40, dtype=torch.uint8), torch.full((8, 3, 64, 64), 215, dtype=torch.uint8)]
    )
    x[:, :, 20:44, 20:44] = 128  # a grey square: where it lands shows the geometry
    out = batches.augment(x, torch.Generator().manual_seed(0), 48)
    assert out.shape == (16, 3, 48, 48) and out.dtype == torch.float32 and out.min() >= 0 and out.max() <= 1
    means = out.mean((1, 2, 3))
    assert means[:8].max() < means[8:].min()  # the label of each photo still holds
    assert len({tuple(o[0, ::12, ::12].flatten().tolist()) for o in out}) == 16  # each photo augmented differently
    assert torch.equal(out, batches.augment(x, torch.Generator().manual_seed(0), 48))
    assert not torch.equal(out, batches.augment(x, torch.Generator().manual_seed(1), 48))


def test_checked_crops_names_an_unreadable_photo():
    crops = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    good = [([0, 1], (crops, ["", ""]))]
    assert [x.shape for x in batches.checked_crops(good, ["a.jpg", "b.jpg"])] == [(2, 3, 8, 8)]
    bad = [([0, 1], (crops, ["", "not a readable image (UnidentifiedImageError)"]))]
    with pytest.raises(OSError, match=r"^b.jpg is not a readable image \(UnidentifiedImageError\); delete it"):
        list(batches.checked_crops(bad, ["a.jpg", "b.jpg"]))
