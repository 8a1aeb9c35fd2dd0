"""skinlesion/reading.py: a file from a folder others fill is read only when it is a regular file (a named pipe
is never waited on, a device never read, a folder refused), within a bound on its bytes, and JSON only as deep
as it can be parsed; each refusal is one line naming the file and saying what it is."""

import json
import os

import pytest

from conftest import alarm
from skinlesion import reading


@pytest.fixture
def odd_files(tmp_path):
    """A regular file, a link to it, a named pipe, a folder, a link to /dev/zero and a dangling link."""
    (tmp_path / "a.json").write_text('{"a": 1}')
    os.symlink(tmp_path / "a.json", tmp_path / "link.json")
    os.mkfifo(tmp_path / "pipe.json")
    (tmp_path / "folder.json").mkdir()
    os.symlink("/dev/zero", tmp_path / "zero.json")
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling.json")
    return tmp_path


def test_only_a_regular_file_is_opened_and_a_named_pipe_never_blocks(odd_files):
    with alarm(20, "blocked on a named pipe"):
        for name, kind in [("pipe.json", "a named pipe"), ("folder.json", "a folder"), ("zero.json", "a device")]:
            with pytest.raises(reading.Unreadable) as e:
                reading.open_regular(str(odd_files / name), 100)
            assert str(e.value) == f"{odd_files / name} is {kind}, not a regular file"
        with pytest.raises(FileNotFoundError):
            reading.open_regular(str(odd_files / "dangling.json"), 100)
    for name in ["a.json", "link.json"]:  # the nearest thing accepted: a regular file, and a link to one
        with reading.open_regular(str(odd_files / name), 100) as f:
            assert f.read() == b'{"a": 1}'
    with pytest.raises(reading.Unreadable, match="link.json is a symbolic link, not a regular file"):
        reading.open_regular(str(odd_files / "link.json"), 100, follow_links=False)
    assert reading.read_bytes(str(odd_files / "a.json"), 8, follow_links=False) == b'{"a": 1}'


def test_a_file_over_its_bound_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "big.json"
    path.write_bytes(b" " * 2001)
    with pytest.raises(reading.Unreadable) as e:
        reading.read_bytes(str(path), 2000)
    assert str(e.value) == f"{path} is 2,001 bytes, over the 2,000 it may be"
    assert reading.read_bytes(str(path), 2001) == b" " * 2001
    with pytest.raises(reading.Unreadable, match="is 1,500,000 bytes, over the 1,000,000 it may be"):
        path.write_bytes(b" " * 1_500_000)
        reading.read_json(str(path), 1_000_000)


def test_json_nested_too_deeply_or_not_json_is_one_line(tmp_path):
    deep, flat, damaged = tmp_path / "deep.json", tmp_path / "flat.json", tmp_path / "damaged.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    flat.write_text(json.dumps([[[1]]]))
    damaged.write_bytes(b'{"a": \xff}')
    with pytest.raises(reading.Unreadable) as e:
        reading.read_json(str(deep), 10**6)
    assert str(e.value) == f"{deep} is JSON nested too deeply to read"
    with pytest.raises(reading.Unreadable, match=r"damaged.json is not JSON \("):
        reading.read_json(str(damaged), 10**6)
    assert reading.read_json(str(flat), 10**6) == [[[1]]]
