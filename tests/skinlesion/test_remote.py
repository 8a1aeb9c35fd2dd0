"""skinlesion/remote.py: a file at a network address is read with a deadline for connecting and one for the whole
read; a server that accepts and never answers, or a command that never ends, is one plain line naming the address
(no Python tuple of curl's arguments), and whatever was started to fetch it is stopped."""

import contextlib
import functools
import http.server
import os
import shutil
import socket
import ssl
import subprocess
import threading

import pytest

from conftest import SERVER_POLL, alarm, main_fails, save_model
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
        threading.Thread(target=server.serve_forever, args=(SERVER_POLL,), daemon=True).start()
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
    assert message == (
        f"{url}/nope.json cannot be read: the server answers with an error (HTTP 404: not found, or not allowed)"
    )


class PlannedHandler(http.server.BaseHTTPRequestHandler):
    """Answers each request as the server's plan says, in turn: 'ok' (the file, from the byte a 'Range: bytes=N-'
    asks for), an HTTP status such as 503 or 404, 'reset' (the connection closed unanswered) or 'half' (the whole
    file announced, half of it sent, the connection closed). The server notes each request's Range header."""

    def do_GET(self):
        step = self.server.plan.pop(0) if self.server.plan else "ok"
        self.server.seen.append(self.headers.get("Range"))
        body = self.server.body
        if step == "reset":
            self.close_connection = True
            return
        if isinstance(step, int):
            self.send_error(step)
            return
        start = int(self.headers["Range"].split("=")[1].rstrip("-")) if self.headers.get("Range") else 0
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        self.wfile.write(body[start : len(body) // 2] if step == "half" else body[start:])
        self.close_connection = True

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def planned_server(plan, body, tls=None):
    """A local server answering by plan (PlannedHandler) with body as its file; tls: (certificate, key) files to
    answer over HTTPS with. Yields (the file's address, the Range headers of the requests it saw)."""
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), PlannedHandler) as server:
        server.plan, server.body, server.seen = list(plan), body, []
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            server.socket = context.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, args=(SERVER_POLL,), daemon=True).start()
        try:
            yield f"{'https' if tls else 'http'}://127.0.0.1:{server.server_address[1]}/shard-000000.tar", server.seen
        finally:
            server.shutdown()


BODY = bytes(range(256)) * 4000  # a shard's bytes: a read resumed at the wrong byte would show


@pytest.mark.parametrize("plan", [[503, "reset"], ["half", "half"], [502, "half"]])
def test_a_transient_failure_is_tried_again_from_the_byte_it_stopped_at(monkeypatch, plan):
    """WebDataset's curl retried a failed read; ours gave up at once, so a brief network failure stopped a long
    training. A server that fails twice (an error 5xx, a connection closed unanswered or cut short mid-file) and
    then answers gives the whole file, each try resumed where the bytes stopped."""
    monkeypatch.setattr(remote, "PAUSES", [0.1, 0.1, 0.1])
    with planned_server(plan, BODY) as (url, seen), alarm(60, "a retried read hung"):
        assert remote.read_all(url, len(BODY)) == BODY
    assert len(seen) == 3  # two failures, then the answer
    half = f"bytes={len(BODY) // 2}-"
    if plan == ["half", "half"]:
        assert seen == [None, half, half]  # the second half asked for (the server sent nothing new the 2nd time)
    elif plan == [502, "half"]:
        assert seen == [None, None, half]


@pytest.mark.parametrize("answer", [404, 403])
def test_a_permanent_failure_is_not_tried_again(monkeypatch, answer):
    monkeypatch.setattr(remote, "PAUSES", [0.1, 0.1, 0.1])
    with planned_server([answer] * 5, BODY) as (url, seen):
        message = read_fails(url, 30)
    assert len(seen) == 1
    assert (
        message == f"{url} cannot be read: the server answers with an error (HTTP {answer}: not found, or not allowed)"
    )


def test_a_certificate_that_is_not_trusted_is_not_tried_again(tmp_path, monkeypatch):
    if not shutil.which("openssl"):
        pytest.skip("making a test certificate needs the openssl command")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "1", "-subj", "/CN=127.0.0.1"], check=True, capture_output=True, timeout=60)  # fmt: skip
    monkeypatch.setattr(remote, "PAUSES", [0.1, 0.1, 0.1])
    with planned_server([], BODY, tls=(cert, key)) as (url, seen):
        message = read_fails(url, 30)
    assert message == f"{url} cannot be read: the server's certificate is not trusted" and seen == []


def test_a_server_that_keeps_failing_is_given_up_in_one_line_within_the_deadline(monkeypatch):
    """Four tries in all, the last failure said with how many there were; and never past --network-timeout: where
    the pause before the next try would outlast the deadline, no further try is started."""
    monkeypatch.setattr(remote, "PAUSES", [0.1, 0.1, 0.1])
    with planned_server([503] * 10, BODY) as (url, seen):
        message = read_fails(url, 30)
    assert len(seen) == remote.TRIES == 4
    assert message == (
        f"{url} cannot be read: the server answers with an error (HTTP 503: busy or failing); gave up after 4 tries "
        "within --network-timeout 30 s"
    )
    monkeypatch.setattr(remote, "PAUSES", [60.0] * 3)  # a pause longer than the deadline: no second try
    with planned_server([503] * 10, BODY) as (url, seen):
        message = read_fails(url, 30)
    assert len(seen) == 1 and message.endswith(
        "(HTTP 503: busy or failing); gave up after 1 try within --network-timeout 30 s"
    )


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
