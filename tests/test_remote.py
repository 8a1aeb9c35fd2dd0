"""skinlesion/remote.py: a file at a network address is read with a deadline for connecting and one for the whole
read; a server that accepts and never answers, or a command that never ends, is one plain line naming the address
(no Python tuple of curl's arguments), and whatever was started to fetch it is stopped."""

import contextlib
import functools
import http.server
import os
import socket
import threading

import pytest

from conftest import alarm, main_fails, save_model
from skinlesion import dataset, remote, shard_format


@contextlib.contextmanager
def silent_server():
    """A local server that accepts connections and never answers: its address."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    held, stop = [], threading.Event()

    def accept():
        while not stop.is_set():
            with contextlib.suppress(OSError):
                held.append(listener.accept()[0])  # kept open, never answered

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/shards"
    finally:
        stop.set()
        listener.close()
        for connection in held:
            connection.close()


@contextlib.contextmanager
def file_server(folder):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        yield f"http://127.0.0.1:{server.server_address[1]}"
        server.shutdown()


def read_fails(url, seconds=2):
    """The one line that reading url fails with (within seconds)."""
    with alarm(60, f"reading {url} hung"), pytest.raises(OSError) as e, remote.Reader(url, seconds) as f:
        f.read()
    message = str(e.value)
    assert "\n" not in message and "['curl'" not in message and "Pipe" not in message, message
    return message


def test_a_server_that_accepts_and_never_answers_is_one_line_once_the_deadline_passes():
    with silent_server() as url:
        message = read_fails(url + "/shards.json")
    assert message == (
        f"{url}/shards.json cannot be read: no complete answer within 2 s; check the address and the network, or "
        "raise --network-timeout"
    )


def test_a_file_on_a_server_is_read_and_a_missing_one_is_one_line(tmp_path):
    (tmp_path / "shards.json").write_bytes(b'{"format": "webdataset"}')
    with file_server(tmp_path) as url:
        assert remote.read_all(url + "/shards.json", 100) == b'{"format": "webdataset"}'  # the nearest accepted
        message = read_fails(url + "/nope.json")
        with pytest.raises(OSError, match="holds over 10 bytes, more than it may"):
            remote.read_all(url + "/shards.json", 10)
    assert message == f"{url}/nope.json cannot be read: the server answers with an error (not found, or not allowed)"


def test_a_command_that_never_ends_is_stopped_at_the_deadline_and_one_that_fails_is_one_line(tmp_path):
    started = tmp_path / "started"
    with (
        alarm(60, "a pipe: command hung"),
        pytest.raises(OSError) as e,
        remote.Reader(f"pipe:echo $$ > {started}; exec sleep 1000", 1) as f,
    ):
        f.read()
    assert str(e.value).endswith("cannot be read: no complete answer within 1 s; check the address and the network, "
                                 "or raise --network-timeout")  # fmt: skip
    pid = int(started.read_text())
    with pytest.raises(ProcessLookupError):  # the command (its sleep) was stopped, not left running
        os.kill(pid, 0)
    assert read_fails("pipe:exit 3") == "pipe:exit 3 cannot be read: the command ended with exit status 3"
    assert read_fails("s3://bucket/shards.json").endswith("is an address of a kind that is not read here; use "
                                                          f"{remote.ADDRESSES}")  # fmt: skip


@pytest.mark.slow  # imports and builds a model (seconds), then waits out two deadlines
def test_training_and_evaluating_from_a_server_that_never_answers_stop_at_the_network_timeout(tmp_path, capsys,
                                                                                              monkeypatch):  # fmt: skip
    """AItraining.py and evaluate.py hung silently on such a server (WebDataset's curl has no --max-time)."""
    import AItraining
    import evaluate

    monkeypatch.setattr(remote, "SECONDS", [600.0])  # the flag sets it: put back after the test
    model_file = save_model(tmp_path / "m.pth", size=32)
    with silent_server() as url, alarm(120, "a script hung on the server"):
        for main, argv, first in [
            (AItraining.main, ["--data-dir", url, "--output", tmp_path / "out.pth"], dataset.MANIFEST),
            (evaluate.main, ["--model", model_file, "--data-dir", url + "/test", "--output-dir", tmp_path],
             shard_format.INDEX),
        ]:  # fmt: skip
            expected = f"{url}/{first} cannot be read: no complete answer within 2 s; check the address and the"
            main_fails(main, [*argv, "--network-timeout", 2], capsys, expected)
