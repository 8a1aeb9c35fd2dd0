"""Where the work runs: one device (CUDA, then Apple MPS, then the CPU), or several processes under torchrun
(DistributedDataParallel: NCCL on GPUs, gloo on CPUs). Each process trains on its own share of every epoch;
validation predictions are gathered so every photo counts once; BatchNorm's running statistics are taken from
rank 0; only rank 0 writes."""

import hashlib
import os

from skinlesion.messages import UserError

NEEDED = ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")  # what torchrun sets beside WORLD_SIZE


def pick_device():
    """CUDA, then Apple MPS, then the CPU."""
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def setup():
    """(rank, world size, device). A WORLD_SIZE that torchrun did not set is one error line."""
    import torch
    import torch.distributed as dist

    text = os.environ.get("WORLD_SIZE", "1")
    if not text.isdigit() or int(text) < 1:
        raise UserError(f"WORLD_SIZE={text} is not a number of processes; unset it, or start several with torchrun")
    world = int(text)
    if world == 1:
        return 0, 1, pick_device()
    missing = [key for key in NEEDED if key not in os.environ]
    if missing:
        raise UserError(
            f"WORLD_SIZE={world} is set but {', '.join(missing)} not: start the processes with torchrun "
            "(torchrun --nproc_per_node=2 AItraining.py), or unset WORLD_SIZE"
        )
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    device = torch.device("cpu")
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    return dist.get_rank(), world, device


def gathered(world, indices, *columns):
    """Every process's (indices, columns...) merged: each index once, in index order, as lists per column."""
    import torch.distributed as dist

    if world == 1:
        return [list(column) for column in columns]
    parts = [None] * world
    dist.all_gather_object(parts, (list(indices), *[list(c) for c in columns]))
    merged = {}
    for part in parts:
        for i, *values in zip(*part):
            merged[i] = values
    return [list(column) for column in zip(*[merged[i] for i in sorted(merged)])]


def sync_buffers(net, world):
    """BatchNorm running statistics are per process: use rank 0's everywhere."""
    import torch.distributed as dist

    if world > 1:
        for buffer in net.buffers():
            dist.broadcast(buffer.data, 0)


def finish(net, rank, world):
    """Print a hash of this process's final weights (equal on every rank when DDP worked) and leave the group."""
    import torch
    import torch.distributed as dist

    if world > 1:
        flat = torch.cat([t.detach().float().flatten().cpu() for t in net.state_dict().values()])
        print(
            f"rank {rank}/{world}: final weights {hashlib.sha256(flat.numpy().tobytes()).hexdigest()[:12]}", flush=True
        )
        dist.destroy_process_group()
