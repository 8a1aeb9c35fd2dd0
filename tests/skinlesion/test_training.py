"""skinlesion/training.py: the learning-rate schedule, one epoch of training (its loss and accuracy, and one line
when the loss stops being a number), one pass over the validation split. The whole training run is in
test_AItraining.py.
The training data path: augmentation keeps labels and value ranges, each photo gets its
own draw, the same seed the same batch; an unreadable photo is an OSError naming it. The TensorBoard log: recorded
as ours, its writer thread's error said once, where it comes back."""

import os
import resource
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

from conftest import ENV, ROOT, assert_one_error, fails
from skinlesion import ledger, training


def test_learning_rate_schedule():
    factors = [training.lr_factor(step, 100, 0.05, "cosine") for step in range(100)]
    assert factors[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])  # linear warm-up over 5% of the steps
    assert factors[5] == pytest.approx(1.0) and factors[-1] < 0.002 and np.all(np.diff(factors[5:]) < 0)
    assert factors[5 + 95 // 2] == pytest.approx(0.5, abs=0.02)  # cosine: half way down at the middle
    assert [training.lr_factor(s, 100, 0, "constant") for s in (0, 50, 99)] == [1.0, 1.0, 1.0]
    assert training.lr_factor(0, 1, 0, "cosine") == 1.0  # one step: no division by zero


def tiny_run(x):
    """A linear classifier, its loss, optimiser and schedule, and one batch of (x, labels)."""
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    return net, torch.nn.CrossEntropyLoss(), optimizer, scheduler, [(x, torch.tensor([0, 1, 1, 0]))]


def test_one_epoch_returns_the_mean_loss_and_accuracy():
    x = torch.tensor([[-1.0, 0, 0], [1, 0, 0], [2, 0, 0], [-2, 0, 0]])
    net, criterion, optimizer, scheduler, batches = tiny_run(x)
    with torch.no_grad():
        expected = criterion(net(x), batches[0][1]).item()
    loss, accuracy = training.train_one_epoch(net, batches, criterion, optimizer, scheduler, False, "epoch 1")
    assert loss == pytest.approx(expected) and 0 <= accuracy <= 1
    training.train_one_epoch(net, batches * 30, criterion, optimizer, scheduler, False, "epoch 2")
    later = training.train_one_epoch(net, batches, criterion, optimizer, scheduler, False, "epoch 3")
    assert later[0] < loss and later[1] == 1.0  # it learns


def test_a_loss_that_stops_being_a_number_is_one_line(capsys):
    x = torch.tensor([[-1.0, 0, 0], [1, 0, 0], [np.nan, 0, 0], [-2, 0, 0]])
    net, criterion, optimizer, scheduler, batches = tiny_run(x)
    expected = "training diverged: the loss became nan in epoch 3"
    fails(capsys, expected, training.train_one_epoch, net, batches, criterion, optimizer, scheduler, False, "epoch 3")


def test_validation_pass_gives_labels_logits_and_loss_and_stops_on_non_finite_outputs(capsys):
    net = torch.nn.Linear(3, 2)
    x = torch.randn(5, 3)
    batches = [([3, 4], x[3:], torch.tensor([1, 0])), ([0, 1, 2], x[:3], torch.tensor([0, 1, 1]))]
    labels, logits, loss = training.predict_split(net, batches, False, world=1)
    with torch.no_grad():
        expected = net(torch.cat([x[3:], x[:3]])).double().numpy()
    assert labels.tolist() == [1, 0, 0, 1, 1] and np.allclose(logits, expected)
    assert loss == pytest.approx(
        torch.nn.functional.cross_entropy(torch.from_numpy(expected), torch.tensor([1, 0, 0, 1, 1])).item(), rel=1e-5
    )
    with torch.no_grad():
        net.bias.fill_(np.inf)
    fails(capsys, "the model gives non-finite outputs", training.predict_split, net, batches, False, world=1)


# ---------------------------------------------------------------------------- batches
def test_augmentation_keeps_labels_and_value_ranges():
    """Dark photos stay darker than bright ones whatever the crop, rotation, flip and colour change; values stay
    in [0, 1]; each photo gets its own draw; the same seed gives the same batch."""
    x = torch.cat(
        [torch.full((8, 3, 64, 64), 40, dtype=torch.uint8), torch.full((8, 3, 64, 64), 215, dtype=torch.uint8)]
    )
    x[:, :, 20:44, 20:44] = 128  # a grey square: where it lands shows the geometry
    out = training.augment(x, torch.Generator().manual_seed(0), 48)
    assert out.shape == (16, 3, 48, 48) and out.dtype == torch.float32 and out.min() >= 0 and out.max() <= 1
    means = out.mean((1, 2, 3))
    assert means[:8].max() < means[8:].min()  # the label of each photo still holds
    assert len({tuple(o[0, ::12, ::12].flatten().tolist()) for o in out}) == 16  # each photo augmented differently
    assert torch.equal(out, training.augment(x, torch.Generator().manual_seed(0), 48))
    assert not torch.equal(out, training.augment(x, torch.Generator().manual_seed(1), 48))


def test_checked_crops_names_an_unreadable_photo():
    crops = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    good = [([0, 1], (crops, ["", ""]))]
    assert [x.shape for x in training.checked_crops(good, ["a.jpg", "b.jpg"])] == [(2, 3, 8, 8)]
    bad = [([0, 1], (crops, ["", "not a readable image (UnidentifiedImageError)"]))]
    with pytest.raises(OSError, match=r"^b.jpg is not a readable image \(UnidentifiedImageError\); delete it"):
        list(training.checked_crops(bad, ["a.jpg", "b.jpg"]))


# ---------------------------------------------------------------------------- memory
def test_the_memory_estimate_counts_what_autograd_keeps_scaled_by_pixels_and_batch():
    """A convolution keeps its input and a ReLU its output for the backward pass: 3 + 4 floats per pixel and photo
    (float32), counted here by hand; the weights (112 numbers) four times over (weights, gradients, two moments)."""
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU())
    expected = (7 * 4 * 100**2 * 8 + 16 * (4 * 3 * 9 + 4)) / 1e9  # 8 photos at 100 px
    assert training.training_gigabytes(net, 100, 8) == pytest.approx(expected)
    assert training.training_gigabytes(net, 200, 8) == pytest.approx((expected - 16 * 112 / 1e9) * 4 + 16 * 112 / 1e9)
    assert list(net.parameters())[0].grad is None  # the estimate ran on a copy


def test_running_out_of_memory_in_a_step_is_one_line_naming_the_flag(capsys):
    """The CPU allocator's failure (and a GPU's torch.OutOfMemoryError, a RuntimeError) is one line that names the
    flag to lower; any other RuntimeError is not swallowed."""
    x = torch.zeros(8, 3, 2, 2)

    class Hungry(torch.nn.Module):
        def __init__(self, error):
            super().__init__()
            self.layer, self.error = torch.nn.Linear(12, 2), error

        def forward(self, x):
            raise self.error

    _, _, optimizer, scheduler, _ = tiny_run(x)
    batches = [(x, torch.zeros(8, dtype=torch.long))]
    error = RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried")
    fails(capsys, "cpu ran out of memory training at 2 px with batch 8 ([enforce fail at alloc_cpu.cpp:117] "
          "DefaultCPUAllocator: can't allocate memory: you tried); lower --batch-size to 2 (or --image-size)",
          training.train_one_epoch, Hungry(error), batches, torch.nn.CrossEntropyLoss(), optimizer, scheduler, False,
          "epoch 1")  # fmt: skip
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        training.train_one_epoch(Hungry(RuntimeError("shapes cannot be multiplied")), batches,
                                 torch.nn.CrossEntropyLoss(), optimizer, scheduler, False, "epoch 1")  # fmt: skip


def test_the_tensorboard_log_is_recorded_and_quiets_only_its_own_thread(tmp_path, monkeypatch):
    errors = []
    monkeypatch.setattr(threading, "excepthook", lambda hook_args: errors.append(hook_args.exc_value))
    log = training.TensorBoardLog(str(tmp_path / "runs"), "run1", 1)
    other = threading.Thread(target=os.stat, args=[str(tmp_path / "missing")])  # an OSError in a thread of ours
    other.start()
    other.join()
    assert [type(e) for e in errors] == [FileNotFoundError]  # still printed
    log.add({"val_loss": 0.5, "roc_auc": 0.75}, 1)
    log.close()
    (event_file,) = os.listdir(tmp_path / "runs" / "run1")
    assert set(ledger.read(str(tmp_path / "runs"))["files"]) == {os.path.join("run1", event_file)}
    assert threading.excepthook.__name__ == "<lambda>"  # the hook before it is back


@pytest.mark.slow  # starts a Python process that imports torch and TensorBoard
def test_a_full_disk_while_a_missing_log_dir_is_made_leaves_no_folder_behind(tmp_path):
    """A full disk (a write limit of 16 bytes) while --log-dir logs/deep is created: the mark of the new folder
    cannot be written, and the folders the run made (logs, logs/deep) were left behind empty and unmarked. The
    one error line stays; nothing the run made is left."""
    code = (
        "import sys; from skinlesion import interrupts, training; "
        "sys.exit(interrupts.run_script(lambda: training.TensorBoardLog('logs/deep', 'run', 1)))"
    )  # as a script runs it: its handler turns the UserError into the one line

    def limit():  # in the child: any write over 16 bytes fails with 'File too large', as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (16, 16))

    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=dict(ENV, PYTHONPATH=ROOT), capture_output=True,
                       text=True, timeout=300, preexec_fn=limit)  # fmt: skip
    assert_one_error(r.returncode, r.stderr, "error: could not write the TensorBoard log logs/deep/run (")
    assert "free some disk space or pass another --log-dir" in r.stderr
    assert os.listdir(tmp_path) == []


def epoch_orders(monkeypatch, first_epoch=0, epochs=3, folds=False):
    """{epoch: (the shard order a Stream of 7 shards draws, the photo order a Split of 8 draws, the fold's order)}
    as AItraining.train_epochs hands each epoch its generator (train_batches, the epoch and validation stubbed)."""
    from types import SimpleNamespace

    import AItraining
    from skinlesion import devices, resume, shards

    stream = shards.Stream.__new__(shards.Stream)  # only what Stream.epoch reads: its shards, photos and split
    stream.sources, stream.paths, stream.split = [dict(url=f"train-{i}.tar") for i in range(7)], list(range(42)), "t"
    split = training.Split.__new__(training.Split)  # only what Split.epoch reads: its photos and batches
    split.paths, split.batches = list(range(8)), list
    seen, found = {}, {}
    stream.chunks = lambda shards_, seed, shuffle: seen.setdefault("shards", shards_) and iter([None])
    stream.rebatched = lambda chunks, size, steps: next(chunks)

    def train_batches(train, batch_size, cfg, generator, generator_device, rank, world, order):
        state = generator.get_state()
        stream.epoch(batch_size, generator)
        generator.set_state(state)  # the same draws for the Split's order
        photos = [i for batch in split.epoch(batch_size, generator) for i in batch]
        found[len(found) + first_epoch + 1] = (seen.pop("shards"), photos, None if order is None else order.tolist())
        return []

    monkeypatch.setattr(training, "train_batches", train_batches)
    monkeypatch.setattr(training, "train_one_epoch", lambda *args, **kwargs: (0.0, 0.0))
    monkeypatch.setattr(training, "epoch_line", lambda *args, **kwargs: "")
    monkeypatch.setattr(devices, "sync_buffers", lambda *args: None)
    monkeypatch.setattr(resume, "record_epoch", lambda *args: False)
    optimizer = SimpleNamespace(param_groups=[dict(lr=0.1)])
    step = SimpleNamespace(net=None, criterion=None, optimizer=optimizer, schedule=None, writer=None)
    monkeypatch.setattr(AItraining, "training_step_parts", lambda *args: step)
    args = SimpleNamespace(seed=0, batch_size=2, epochs=epochs, amp=False, patience=9)
    meta = dict(classes=["benign", "malignant"])
    run = SimpleNamespace(args=args, device=torch.device("cpu"), world=1, rank=1, cfg=None, net=None, meta=meta)
    run.log = lambda text: None
    stage = SimpleNamespace(name="", train=np.arange(10, 18) if folds else None, held=np.array([], dtype=int))
    progress = dict(epoch=first_epoch, stage=0, stopped_early=False)
    AItraining.train_epochs(run, progress, stage, (None, None), epochs, np.zeros(8, dtype=int))
    return found


@pytest.mark.parametrize("folds", [False, True])
def test_the_shard_and_photo_order_change_with_each_epoch_and_a_resumed_run_replays_them(monkeypatch, folds):
    """Each epoch of a stage draws another shard order (shards.Stream.epoch), photo order (training.Split.epoch)
    and, in a fold, another order of the fold's photos; a run resumed after epoch 1 draws epochs 2 and 3 as the
    fresh run did. Kills the epoch left out of the generator's seed in AItraining.train_epochs (every epoch the
    same order: a shard's photos always first, the same batches every epoch) and a Stream that reads its shards
    in index order (`shards = list(range(len(self.sources)))[rank::world]`) or a Split that does not permute its
    photos (`order = torch.arange(len(self.paths))`), or a fold whose photos are not reordered, which
    tests/skinlesion/test_shards.py::test_a_stream_decodes_as_the_cache_and_its_order_is_set_by_the_seed lets
    through (its buffer shuffle still follows the seed)."""
    fresh = epoch_orders(monkeypatch, folds=folds)
    assert sorted(fresh) == [1, 2, 3]
    for shard_order, photo_order, fold_order in fresh.values():
        assert sorted(shard_order) == list(range(7)) and sorted(photo_order) == list(range(8))
        if folds:
            assert sorted(fold_order) == list(range(10, 18))
        else:
            assert fold_order is None
    for part in range(3 if folds else 2):
        orders = [tuple(fresh[epoch][part]) for epoch in (1, 2, 3)]
        assert len(set(orders)) == 3, (part, orders)
    assert epoch_orders(monkeypatch, first_epoch=1, folds=folds) == {epoch: fresh[epoch] for epoch in (2, 3)}
