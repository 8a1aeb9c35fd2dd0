"""skinlesion/devices.py: one process on the best device, or several under torchrun; a WORLD_SIZE that torchrun
did not set is one line saying to use torchrun."""

import pytest
import torch

from conftest import fails
from skinlesion import devices


@pytest.fixture
def no_torchrun(monkeypatch):
    for key in ("WORLD_SIZE", *devices.NEEDED):
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


@pytest.mark.parametrize(
    "world, expected",
    [
        (
            "2",
            "WORLD_SIZE=2 is set but RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT not: start the processes with torchrun",
        ),
        ("abc", "WORLD_SIZE=abc is not a number of processes; unset it, or start several with torchrun"),
        ("0", "WORLD_SIZE=0 is not a number of processes"),
        ("-2", "WORLD_SIZE=-2 is not a number of processes"),
    ],
)
def test_a_world_size_without_torchrun_is_one_line(no_torchrun, capsys, world, expected):
    no_torchrun.setenv("WORLD_SIZE", world)
    fails(capsys, expected, devices.setup)
    assert not torch.distributed.is_initialized()


def test_one_process_without_torchrun(no_torchrun):
    assert devices.setup() == (0, 1, devices.pick_device())
    no_torchrun.setenv("WORLD_SIZE", "1")
    assert devices.setup()[:2] == (0, 1)
    assert devices.gathered(1, [2, 0], ["b", "a"], [0.2, 0.1]) == [["b", "a"], [0.2, 0.1]]


def test_pick_device_falls_back_to_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert devices.pick_device() == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert devices.pick_device() == torch.device("cuda")
