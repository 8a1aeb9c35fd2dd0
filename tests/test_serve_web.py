"""serve_web.py without a browser: the build folder it owns (never written through a link, never a folder of the
user's), the allow-list it serves from memory, the Host check, the security headers, timeouts, and one quiet
log line (never a traceback) for every bad, aborted or too large request. Each case sends the exact request
over a raw socket to a server on a free port. A tiny ONNX model (with a 'cam' output, valid metadata and 16 MB
of weights, the size of the real one) keeps it fast. The tests that serve need node_modules (npm ci): they
skip without it on a developer machine and fail where the CI environment variable is set."""

import gzip
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request

import onnx
import pytest

from conftest import ROOT, assert_one_error, fingerprint, mark_made, run, save_model, skip_or_fail, start_server
from skinlesion import model_file

pytestmark = pytest.mark.slow  # each test starts serve_web.py: make test, not make check

SCRIPT = os.path.join(ROOT, "serve_web.py")
NODE_MODULES = os.path.join(ROOT, "node_modules")
SIZE = 64
PAGE = ("index.html", "style.css", "app.js", "preprocess.js")  # served as they are in web/ (sw.js is filled in)
VENDOR = ("ort-wasm-simd-threaded.wasm", "ort.wasm.bundle.min.mjs")
SIDECAR_KEYS = {name for name, key in model_file.KEYS.items() if key.page} | {  # the table's, and what the page adds
    "borderline_margin",
    "model_file",
    "model_variant",
    "model_sha256",
    "model_name",
    "operating_point_text",
    "operating_point_warning",
}
SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
    "cache-control": "no-cache",
    "server": "serve_web.py",
}
CARD_NAME = "model_card.md"  # what the build publishes the card as
CARD_TEXT = "# Model card\n\nA tiny test model; not a medical device. Ünïcödé.\n"


def require_node_modules():
    """Skip (developer machine) or fail (CI) without onnxruntime-web in node_modules."""
    if not os.path.isdir(os.path.join(NODE_MODULES, "onnxruntime-web", "dist")):
        skip_or_fail("serving the page needs node_modules (run npm ci in the repository root)")


def exported_model(folder):
    """A model as export_onnx.py writes it (a random-init 64 px EfficientNet-B0, 16 MB), and a copy of it without
    the 'cam' output (an export of an earlier version)."""
    checkpoint = save_model(
        folder / "source.pth",
        size=SIZE,
        threshold=0.4,
        at_chance=False,
        val_metrics={"roc_auc": 0.8},
        val_auc_ci95=[0.6, 0.9],
    )
    result = run("export_onnx.py", "--model", checkpoint, "--output", folder / "skin_model.onnx", cwd=folder)
    assert result.returncode == 0, result.stderr
    os.remove(checkpoint)
    proto = onnx.load(folder / "skin_model.onnx")
    del proto.graph.output[2]
    onnx.save(proto, folder.parent / f"{folder.name} without cam.onnx")
    return str(folder / "skin_model.onnx"), str(folder.parent / f"{folder.name} without cam.onnx")


def read(path, mode="r"):
    with open(path, mode) as f:
        return f.read()


def run_script(*args, cwd=ROOT):
    """serve_web.py in a fresh process (conftest.run), killed after 120 s."""
    return run("serve_web.py", *args, cwd=cwd, timeout=120)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A user's folder: the model, its card beside it, and files of the user's own; a victim file elsewhere."""
    folder = tmp_path_factory.mktemp("project")
    onnx_file, without_cam = exported_model(folder)
    (folder / "skin_model.md").write_text(CARD_TEXT, encoding="utf-8")
    (folder / "notes.txt").write_text("the user's notes\n")
    (folder / ".git").mkdir()
    (folder / ".git" / "config").write_text("[core]\n\tsecret = yes\n")
    victim = tmp_path_factory.mktemp("victim") / "victim.txt"
    victim.write_text("precious\n")
    return dict(folder=folder, model=onnx_file, victim=str(victim), without_cam=without_cam)


@pytest.fixture(scope="module")
def server(project):
    """serve_web.py building project/site and serving it, with 2 s timeouts; log() gives its stderr lines."""
    require_node_modules()
    folder = project["folder"]
    log = folder.parent / "server.log"
    before = fingerprint(os.path.dirname(project["victim"]))
    args = ["--model", project["model"], "--site-dir", "site", "--timeout", 2]
    proc, url, port, built = start_server(*args, log=log, cwd=folder)
    try:
        yield dict(url=url, port=port, site=str(folder / "site"), built=built, log=Log(log), pid=proc.pid)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    assert fingerprint(os.path.dirname(project["victim"])) == before


class Log:
    """The server's stderr, read from where the last test left off."""

    def __init__(self, path):
        self.path, self.offset = path, 0

    def new_lines(self, at_least=0, wait=10):
        """The lines written since the last call, waiting up to wait seconds for at_least of them; asserts that
        every line is one quiet line about a client (no traceback)."""
        deadline = time.time() + wait
        while True:
            with open(self.path, encoding="utf-8") as f:
                f.seek(self.offset)
                text = f.read()
            lines = text.splitlines()
            if len(lines) >= at_least or time.time() > deadline:
                break
            time.sleep(0.05)
        self.offset += len(text.encode("utf-8"))
        assert "Traceback" not in text, text
        assert all(line.startswith("127.0.0.1: ") for line in lines), text
        return lines


def exchange(port, request, receive_buffer=None):
    """Send request (bytes) on a fresh connection and read the answer until the server closes it."""
    s = socket.socket()
    if receive_buffer:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    s.settimeout(10)
    s.connect(("127.0.0.1", port))
    chunks = []
    try:
        s.sendall(request)
        while chunk := s.recv(1 << 16):
            chunks.append(chunk)
    except ConnectionResetError:  # the server closed with unread request bytes: what it sent is already here
        pass
    finally:
        s.close()
    return b"".join(chunks)


def parse(response):
    """(status, {lower-case header: value}, body)."""
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode("iso-8859-1").split("\r\n")
    headers = dict(line.split(":", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.strip().lower(): v.strip() for k, v in headers.items()}, body


def request(server, path, method="GET", host=None, headers=""):
    """(status, headers, body) of one request, Host 127.0.0.1:port unless host says otherwise."""
    host = f"127.0.0.1:{server['port']}" if host is None else host
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n{headers}\r\n"
    return parse(exchange(server["port"], head.encode("latin-1")))


def page_meta_csp():
    with open(os.path.join(ROOT, "web", "index.html"), encoding="utf-8") as f:
        return re.search(r'http-equiv="Content-Security-Policy" content="([^"]*)"', f.read()).group(1)


def assert_security_headers(headers):
    for name, value in SECURITY_HEADERS.items():
        assert headers.get(name) == value, (name, headers)
    assert headers["content-security-policy"] == page_meta_csp() + "; frame-ancestors 'none'"
    assert not any("python" in value.lower() for value in headers.values()), headers


# ----------------------------------------------------------------------------- the build


def test_builds_its_own_folder_and_serves_exactly_the_page(server, project):
    site = server["site"]
    assert sorted(os.listdir(site)) == sorted(
        [".skin-lesion-classifier", *PAGE, "sw.js", "vendor", "model.onnx", "model.json", "model_card.md"]
    )
    assert sorted(os.listdir(os.path.join(site, "vendor"))) == sorted(VENDOR)  # no 28 MB full build
    with open(os.path.join(site, "model.json")) as f:
        sidecar = json.load(f)
    assert set(sidecar) == SIDECAR_KEYS and sidecar["threshold"] == 0.4 and sidecar["at_chance"] is False
    assert sidecar["borderline_margin"] == 0.02 and sidecar["model_file"] == "model.onnx"
    with open(project["model"], "rb") as f:  # the page shows it: a user compares it with the published one
        assert sidecar["model_sha256"] == hashlib.sha256(f.read()).hexdigest()
    assert sidecar["model_name"] == os.path.basename(project["model"])  # which file, as the card lists it
    assert "built site: " in server["built"] and f"model card {project['folder'] / 'skin_model.md'}" in server["built"]
    sources = {name: os.path.join(ROOT, "web", name) for name in PAGE}
    sources.update({f"vendor/{name}": os.path.join(NODE_MODULES, "onnxruntime-web", "dist", name) for name in VENDOR})
    sources.update({"model.onnx": project["model"], "model_card.md": str(project["folder"] / "skin_model.md")})
    types = {
        "index.html": "text/html; charset=utf-8",
        "style.css": "text/css; charset=utf-8",
        "app.js": "text/javascript",
        "preprocess.js": "text/javascript",
        "vendor/ort.wasm.bundle.min.mjs": "text/javascript",
        "vendor/ort-wasm-simd-threaded.wasm": "application/wasm",
        "model.onnx": "application/octet-stream",
        "model_card.md": "text/markdown; charset=utf-8",
    }
    for name, source in sources.items():
        with open(source, "rb") as f:
            expected = f.read()
        with open(os.path.join(site, *name.split("/")), "rb") as f:
            assert f.read() == expected, name  # the build holds the same bytes
        with urllib.request.urlopen(server["url"] + name) as response:  # as a browser asks: Host 127.0.0.1:port
            assert response.status == 200 and response.read() == expected, name
            assert response.headers["Content-Type"] == types[name], name
    status, headers, body = request(server, "/")
    assert status == 200 and body == read(sources["index.html"], "rb")
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert_security_headers(headers)
    status, headers, body = request(server, "/model.json?v=2")  # a query string is ignored
    assert status == 200 and json.loads(body) == sidecar and headers["content-type"] == "application/json"
    assert server["log"].new_lines() == []  # good requests are not logged


def test_head_and_a_matching_etag_send_no_body(server):
    status, headers, body = request(server, "/model.onnx", method="HEAD")
    assert status == 200 and body == b"" and int(headers["content-length"]) > 16_000_000
    status, headers, body = request(server, "/model.onnx", headers=f"If-None-Match: {headers['etag']}\r\n")
    assert status == 304 and body == b""
    assert_security_headers(headers)
    assert server["log"].new_lines() == []


def site_files(site):
    """{url name: bytes} of every file of a build (its mark left out)."""
    found = {}
    for folder, _, names in os.walk(site):
        for name in names:
            path = os.path.join(folder, name)
            found[os.path.relpath(path, site).replace(os.sep, "/")] = read(path, "rb")
    del found[".skin-lesion-classifier"]
    return found


def worker_build(site):
    """(FILES, BUILD) as serve_web.py wrote them into the build's sw.js."""
    script = read(os.path.join(site, "sw.js"))
    files = json.loads(re.search(r"^const FILES = (.*);$", script, re.M).group(1))
    return files, re.search(r'^const BUILD = "([0-9a-f]+)";$', script, re.M).group(1)


def test_the_service_worker_lists_every_file_of_the_build_by_its_sha256(server, project, tmp_path):
    """sw.js is web/sw.js with {url: SHA-256} of every other file of the build (index.html as "./", the URL the
    page is opened at) and the build id, the SHA-256 of that list, written in; another model is another build."""
    files, build = worker_build(server["site"])
    built = site_files(server["site"])
    expected = {
        ("./" if name == "index.html" else name): hashlib.sha256(data).hexdigest() for name, data in built.items()
    }
    del expected["sw.js"]
    assert files == expected
    assert build == hashlib.sha256(json.dumps(expected, sort_keys=True).encode()).hexdigest()[:16]
    assert f"build {build}; " in server["built"]
    source = read(os.path.join(ROOT, "web", "sw.js")).splitlines()
    served = built["sw.js"].decode().splitlines()
    changed = [(a, b) for a, b in zip(source, served) if a != b]
    assert len(source) == len(served) and [a.split(" = ")[0] for a, _ in changed] == ["const FILES", "const BUILD"]
    other = onnx.load(project["model"])  # the same network, another threshold: another SHA-256
    next(prop for prop in other.metadata_props if prop.key == "threshold").value = "0.41"
    onnx.save(other, tmp_path / "other.onnx")
    r = run_script("--model", tmp_path / "other.onnx", "--no-serve", "--site-dir", tmp_path / "site", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    other_files, other_build = worker_build(tmp_path / "site")
    assert other_build != build and other_files["model.onnx"] != files["model.onnx"]
    assert other_files["model.onnx"] == hashlib.sha256(read(tmp_path / "other.onnx", "rb")).hexdigest()


ACCEPTS_GZIP = ["gzip", "GZIP;Q=0.5", "deflate, gzip;q=0.001", "*", "br, *;q=0.1", "x-gzip", "gzip, deflate, br, zstd"]
REFUSES_GZIP = ["", "identity", "br, deflate", "gzip;q=0", "gzip;q=0.000", "gzip;q=0, *", "*;q=0", "gzip;q=2"]


def test_each_file_is_served_gzip_compressed_where_accepted_and_smaller(server):
    """Every file of the build, asked for with gzip accepted: gzip level 9 (mtime 0: the same bytes each build),
    decoded to the very bytes of the build, where that is smaller than the file; its own ETag and length."""
    compressed = 0
    for name, data in site_files(server["site"]).items():
        packed = gzip.compress(data, compresslevel=9, mtime=0)
        status, headers, body = request(server, "/" + name, headers="Accept-Encoding: gzip, deflate, br\r\n")
        assert status == 200 and headers["vary"] == "Accept-Encoding", name
        assert int(headers["content-length"]) == len(body), name
        if len(packed) < len(data):
            compressed += 1
            assert headers["content-encoding"] == "gzip" and body == packed and gzip.decompress(body) == data, name
            assert headers["etag"] == '"' + hashlib.sha256(packed).hexdigest()[:32] + '"', name
        else:
            assert "content-encoding" not in headers and body == data, name
        assert_security_headers(headers)
    assert compressed >= 7  # the page, the runtime, model.json and the card at least
    status, headers, body = request(server, "/", headers="Accept-Encoding: gzip\r\n")
    assert status == 200 and gzip.decompress(body) == site_files(server["site"])["index.html"]
    assert server["log"].new_lines() == []


def test_gzip_only_where_accept_encoding_allows_it_and_an_etag_per_encoding(server):
    wasm = "/vendor/ort-wasm-simd-threaded.wasm"
    original = site_files(server["site"])[wasm[1:]]
    _, plain, _ = request(server, wasm)
    _, packed, _ = request(server, wasm, headers="Accept-Encoding: gzip\r\n")
    assert plain["etag"] != packed["etag"] and packed["content-encoding"] == "gzip"
    for accept in ACCEPTS_GZIP:
        status, headers, body = request(server, wasm, headers=f"Accept-Encoding: {accept}\r\n")
        assert headers.get("content-encoding") == "gzip" and gzip.decompress(body) == original, accept
        assert headers["etag"] == packed["etag"], accept
    for accept in REFUSES_GZIP:  # gzip;q=0 refuses it (what '*' says too), as does a q-value that is no q-value
        status, headers, body = request(server, wasm, headers=f"Accept-Encoding: {accept}\r\n")
        assert status == 200 and "content-encoding" not in headers and body == original, accept
        assert headers["etag"] == plain["etag"] and int(headers["content-length"]) == len(original), accept
    gz = "Accept-Encoding: gzip\r\n"
    for accept, etag in ((gz, packed["etag"]), ("", plain["etag"])):  # each encoding is revalidated by its own ETag
        for method in ("GET", "HEAD"):
            status, headers, body = request(server, wasm, method, headers=f"{accept}If-None-Match: {etag}\r\n")
            assert status == 304 and body == b"" and headers["etag"] == etag, (accept, method)
            assert headers["vary"] == "Accept-Encoding"
            assert_security_headers(headers)
            listed = f'If-None-Match: "other", W/{etag}\r\n'  # one of a list, weakly compared
            assert request(server, wasm, method, headers=accept + listed)[0] == 304
    status, headers, body = request(server, wasm, headers=f"{gz}If-None-Match: {plain['etag']}\r\n")
    assert status == 200 and headers["content-encoding"] == "gzip" and gzip.decompress(body) == original
    status, headers, body = request(server, wasm, headers=f"If-None-Match: {packed['etag']}\r\n")
    assert status == 200 and "content-encoding" not in headers and body == original
    status, headers, body = request(server, wasm, "HEAD", headers=gz)
    assert status == 200 and body == b"" and headers["content-encoding"] == "gzip"
    assert headers["content-length"] == packed["content-length"] and headers["etag"] == packed["etag"]
    assert server["log"].new_lines() == []


def test_only_the_page_is_served_and_nothing_is_read_from_disk(server):
    site = server["site"]
    os.symlink("/etc/passwd", os.path.join(site, "passwd"))  # planted after the start: the server never looks
    with open(os.path.join(site, "secret.txt"), "w") as f:
        f.write("secret\n")
    with open(os.path.join(site, "style.css"), "a") as f:
        f.write("/* changed on disk */\n")
    paths = [
        "/passwd",
        "/secret.txt",
        "/.skin-lesion-classifier",
        "/vendor/",
        "/vendor",
        "/.git/config",
        "/../.git/config",
        "/%2e%2e/.git/config",
        "/notes.txt",
        "/../notes.txt",
        "/skin_model.onnx",
        "/serve_web.py",
        "/web/app.js",
        "/app.js/",
        "/APP.JS",
        "//etc/passwd",
        "/index.html/..",
        "http://127.0.0.1/etc/passwd",
    ]
    for path in paths:
        status, headers, body = request(server, path)
        assert status == 404, path
        assert b"root:" not in body and b"secret" not in body and b"Index of" not in body, path
        assert_security_headers(headers)
    lines = server["log"].new_lines(at_least=len(paths))
    assert len(lines) == len(paths) and all(": 404 not a file of this page: GET " in line for line in lines), lines
    status, _, body = request(server, "/style.css")
    assert status == 200 and b"changed on disk" not in body  # served from memory


def test_a_nul_byte_in_the_path_is_a_404_in_one_line(server):
    status, headers, _ = request(server, "/app.js%00.png")
    assert status == 404
    assert_security_headers(headers)
    assert server["log"].new_lines(at_least=1) == [
        "127.0.0.1: 404 not a file of this page: GET /app.js%00.png HTTP/1.1"
    ]
    status, _, _ = parse(
        exchange(server["port"], f"GET /app.js\0.png HTTP/1.1\r\nHost: 127.0.0.1:{server['port']}\r\n\r\n".encode())
    )
    assert status == 404
    assert server["log"].new_lines(at_least=1) == [
        "127.0.0.1: 404 not a file of this page: GET /app.js\\x00.png HTTP/1.1"
    ]


def test_requests_for_another_host_are_refused(server):
    port = server["port"]
    for host in ("evil.example.com", f"evil.example.com:{port}", "127.0.0.1", f"127.0.0.1:{port + 1}", "0.0.0.0"):
        status, headers, body = request(server, "/", host=host)
        assert status == 421 and b"Skin lesion" not in body, host
        assert_security_headers(headers)
    response = exchange(port, b"GET / HTTP/1.0\r\n\r\n")  # no Host at all
    assert parse(response)[0] == 421
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}"):
        assert request(server, "/", host=host)[0] == 200, host
    lines = server["log"].new_lines(at_least=6)
    assert len(lines) == 6 and all(
        " 421 Host " in line and " is not this server: GET / HTTP/1." in line for line in lines
    )
    assert "'evil.example.com'" in lines[0]


def test_only_get_and_head(server):
    for method in ("POST", "PUT", "DELETE", "OPTIONS", "TRACE"):
        status, headers, _ = request(server, "/", method=method)
        assert status == 501, method
        assert_security_headers(headers)
    lines = server["log"].new_lines(at_least=5)
    assert len(lines) == 5 and all(": 501 Unsupported method" in line for line in lines), lines


def test_a_too_large_request_is_refused_in_one_line(server):
    huge_header = "X-Filler: " + "a" * 40_000 + "\r\n"
    status, headers, _ = request(server, "/", headers=huge_header * 2)
    assert status == 431
    assert_security_headers(headers)
    long_line = f"GET /{'a' * 70_000} HTTP/1.1\r\nHost: 127.0.0.1:{server['port']}\r\n\r\n"
    assert parse(exchange(server["port"], long_line.encode()))[0] == 414
    lines = server["log"].new_lines(at_least=2)
    assert len(lines) == 2 and ": 431 request larger than 65536 bytes: GET / HTTP/1.1" in lines[0]
    assert ": 414 " in lines[1] and len(lines[1]) < 200


def test_an_aborted_download_is_one_quiet_line(server):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", server["port"]))
    s.sendall(f"GET /model.onnx HTTP/1.1\r\nHost: 127.0.0.1:{server['port']}\r\n\r\n".encode())
    assert s.recv(1024).startswith(b"HTTP/1.1 200 ")
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset, as a tab does
    s.close()
    lines = server["log"].new_lines(at_least=1)
    assert len(lines) == 1 and re.fullmatch(
        r"127\.0\.0\.1: aborted: GET /model\.onnx HTTP/1\.1 \((BrokenPipeError|ConnectionResetError)\)", lines[0]
    ), lines
    assert request(server, "/")[0] == 200


def threads(pid):
    """How many threads the process pid runs (Linux /proc): the server runs one per open connection."""
    return len(os.listdir(f"/proc/{pid}/task"))


def still_open(s):
    """Whether the server has not closed the connection s (nothing to read, and no end of it)."""
    try:
        return s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
    except BlockingIOError:
        return True


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="the server's threads are counted in Linux /proc")
def test_half_open_connections_time_out_and_close_quietly(server):
    port, before = server["port"], threads(server["pid"])
    partial = f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n".encode()  # the headers never end
    sockets = [socket.create_connection(("127.0.0.1", port)) for _ in range(100)]
    for s in sockets:
        s.sendall(partial)
    assert request(server, "/")[0] == 200  # (answered while they are held: test_ctrl_c_stops_serving...)
    for i, s in enumerate(sockets):
        if i % 2:  # half are reset, half closed
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    deadline = time.monotonic() + 60
    while threads(server["pid"]) > before and time.monotonic() < deadline:
        time.sleep(0.05)  # until their threads have ended: every line of theirs is written
    lines = server["log"].new_lines()
    assert len(lines) <= 100, lines  # at most one line each, none a traceback
    assert all(re.search(r": (aborted: GET / |connection dropped \(|timed out )", line) for line in lines), lines
    silent, started = socket.create_connection(("127.0.0.1", port)), socket.create_connection(("127.0.0.1", port))
    started.sendall(partial)
    start = time.perf_counter()
    silent.settimeout(10), started.settimeout(10)
    assert silent.recv(1024) == b"" and started.recv(1024) == b""  # the server closed them after --timeout 2
    assert time.perf_counter() - start > 1.5  # not at once (recv's own 10 s bound: not never)
    silent.close(), started.close()
    assert server["log"].new_lines(at_least=1) == [
        "127.0.0.1: timed out after 2 s in the middle of a request"
    ]  # an idle connection (a browser's preconnect) closes without a word


# ----------------------------------------------------------------------------- a folder that is not ours


def assert_refused(args, expected, cwd, *folders):
    before = [fingerprint(folder) for folder in folders]
    result = run_script(*args, cwd=cwd)
    assert_one_error(result.returncode, result.stderr, expected)
    assert [fingerprint(folder) for folder in folders] == before


def test_a_folder_of_the_user_is_never_written(project, tmp_path):
    folder, victim = project["folder"], project["victim"]
    users = tmp_path / "users_site"
    users.mkdir()
    (users / "index.html").write_text("<p>the user's own page</p>\n")
    (users / "style.css").write_text("body { color: red }\n")
    model_args = ["--no-serve", "--model", project["model"]]
    assert_refused(
        [*model_args, "--site-dir", users],
        "holds files that serve_web.py did not make (index.html, style.css)",
        folder,
        users,
    )
    assert_refused([*model_args, "--site-dir", "."], "holds files that serve_web.py did not make", folder, folder)
    assert_refused(
        [*model_args, "--site-dir", os.path.join(ROOT, "web")], "did not make", folder, os.path.join(ROOT, "web")
    )
    linked = tmp_path / "linked"
    linked.mkdir()
    os.symlink(victim, linked / "app.js")  # site/app.js -> the victim
    assert_refused(
        [*model_args, "--site-dir", linked],
        "holds files that serve_web.py did not make (app.js)",
        folder,
        os.path.dirname(victim),
    )
    os.symlink(os.path.dirname(victim), tmp_path / "link_to_folder")
    assert_refused(
        [*model_args, "--site-dir", tmp_path / "link_to_folder"], "is a symbolic link", folder, os.path.dirname(victim)
    )
    inside = tmp_path / "model_inside"
    inside.mkdir()
    shutil.copy(project["model"], inside / "model.onnx")
    mark_made(inside, kind="site")  # a site of ours, recorded: still never the folder that holds the model
    assert_refused(
        ["--no-serve", "--model", inside / "model.onnx", "--site-dir", inside], "does not hold", folder, inside
    )


def test_a_static_copy_is_built_and_replaced_as_a_whole_never_through_a_link(project, tmp_path):
    require_node_modules()
    no_card = tmp_path / "model" / "skin_model.onnx"  # no .md beside it
    no_card.parent.mkdir()
    shutil.copy(project["model"], no_card)
    out = tmp_path / "out" / "page"
    result = run_script("--no-serve", "--model", no_card, "--site-dir", out)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert "no model card" in result.stdout
    assert sorted(os.listdir(out)) == sorted(
        [".skin-lesion-classifier", *PAGE, "sw.js", "vendor", "model.onnx", "model.json"]
    )
    victim_folder = os.path.dirname(project["victim"])
    before = fingerprint(victim_folder)
    os.remove(out / "app.js")
    os.symlink(project["victim"], out / "app.js")  # planted in our folder: the next build replaces the folder
    os.symlink(victim_folder, out / "vendor2")
    result = run_script("--no-serve", "--model", no_card, "--site-dir", out)  # no longer provably ours: refused
    assert_one_error(result.returncode, result.stderr, "holds files that serve_web.py did not make (app.js, vendor2)")
    assert fingerprint(victim_folder) == before
    assert os.path.islink(out / "app.js") and os.path.islink(out / "vendor2")  # left as they are
    os.remove(out / "app.js")
    os.remove(out / "vendor2")
    shutil.copy(os.path.join(ROOT, "web", "app.js"), out / "app.js")  # a copy: not the file we wrote either
    result = run_script("--no-serve", "--model", no_card, "--site-dir", out)
    assert_one_error(result.returncode, result.stderr, "holds files that serve_web.py did not make (app.js)")
    shutil.rmtree(out)
    result = run_script("--no-serve", "--model", no_card, "--site-dir", out)
    assert result.returncode == 0, result.stderr
    assert read(out / "app.js", "rb") == read(os.path.join(ROOT, "web", "app.js"), "rb")
    assert os.listdir(tmp_path / "out") == ["page"]  # no temporary folder left


def test_the_model_card(project, tmp_path):
    card = tmp_path / "card.md"
    card.write_bytes(b"\xff\xfe not utf-8")
    args = ["--no-serve", "--model", project["model"], "--site-dir", tmp_path / "site"]
    assert_refused([*args, "--card", tmp_path / "missing.md"], "--card", tmp_path, tmp_path)
    assert_refused([*args, "--card", tmp_path], "is a folder", tmp_path, tmp_path)
    if os.path.isdir(os.path.join(NODE_MODULES, "onnxruntime-web")):
        assert_refused([*args, "--card", card], "is not UTF-8 text", tmp_path, tmp_path)


def test_files_it_reads_that_are_no_regular_files_are_named_and_never_block(project, tmp_path):
    """Every file the build reads is a regular file read within a bound: a card beside the model that is a named
    pipe is named and left out (it was left out without a word), as is an int8 twin that is one; onnxruntime-web's
    package.json as a named pipe (it blocked the build for ever) or as JSON nested too deeply (a RecursionError
    traceback) is one line naming it."""
    require_node_modules()
    model_path = tmp_path / "model" / "skin_model.onnx"
    model_path.parent.mkdir()
    shutil.copy(project["model"], model_path)
    os.mkfifo(tmp_path / "model" / "skin_model.md")
    os.mkfifo(tmp_path / "model" / "skin_model.int8.onnx")
    result = run_script("--no-serve", "--model", model_path, "--site-dir", tmp_path / "site")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    card, twin = tmp_path / "model" / "skin_model.md", tmp_path / "model" / "skin_model.int8.onnx"
    assert f"note: {card} is a named pipe, not a model card: none is published (--card FILE)\n" in result.stdout
    assert "no model card, onnxruntime-web" in result.stdout
    assert f"the page runs the full model (model file {twin} is a named pipe, not a regular file;" in result.stdout
    assert CARD_NAME not in os.listdir(tmp_path / "site")
    package = tmp_path / "node_modules" / "onnxruntime-web"
    (package / "dist").mkdir(parents=True)
    for name in VENDOR:
        os.symlink(os.path.join(NODE_MODULES, "onnxruntime-web", "dist", name), package / "dist" / name)
    args = [
        "--no-serve",
        "--model",
        model_path,
        "--site-dir",
        tmp_path / "other",
        "--node-modules",
        tmp_path / "node_modules",
    ]
    for content, said in [
        (None, "is a named pipe, not a regular file"),
        ("[" * 100_000 + "]" * 100_000, "is JSON nested too deeply to read"),
    ]:
        if content is None:
            os.mkfifo(package / "package.json")
        else:
            os.remove(package / "package.json")
            (package / "package.json").write_text(content)
        result = run("serve_web.py", *args, cwd=tmp_path, timeout=60)
        assert_one_error(result.returncode, result.stderr, f"{package / 'package.json'} {said}; run 'npm ci' in")
    assert not os.path.exists(tmp_path / "other")


# ----------------------------------------------------------------------------- flags and errors


@pytest.mark.parametrize("flag", ["--port", "--model", "--site-dir", "--node-modules", "--timeout"])
def test_none_for_a_flag_that_needs_a_value_is_one_line(flag, tmp_path):
    result = run_script(flag, "none", "--no-serve", cwd=tmp_path)
    assert_one_error(result.returncode, result.stderr, f"argument {flag}: none: this flag needs a value")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--port", "65536"], "--port 65536: use 0 to 65535 (or set PORT at the top of serve_web.py)"),
        (["--timeout", "0.09"], "--timeout 0.09: use 0.1 to 3600"),
        (["--port", "abc"], "invalid int value: 'abc'"),
    ],
)
def test_bad_flag_values_are_one_line(args, expected, tmp_path):
    result = run_script(*args, "--no-serve", cwd=tmp_path)
    assert_one_error(result.returncode, result.stderr, expected)


def test_says_what_is_wrong_in_one_line(tmp_path, project):
    cases = [
        (["--model", tmp_path / "missing.onnx"], "not found; export one with 'python export_onnx.py'"),
        (["--model", project["without_cam"]], "is refused: its outputs (shapes after the batch) are"),
        (["--model", project["model"], "--node-modules", tmp_path / "nothing"], "run 'npm ci'"),
    ]
    for args, expected in cases:
        result = run_script(*args, "--no-serve", "--site-dir", tmp_path / "site")
        assert_one_error(result.returncode, result.stderr, expected)
    assert not os.path.exists(tmp_path / "site")  # nothing half-built


def test_the_build_is_torch_free(project, tmp_path):
    require_node_modules()
    code = (
        "import runpy, sys; "
        "sys.argv = ['serve_web.py', '--no-serve', '--model', sys.argv[1], '--site-dir', sys.argv[2]]; "
        f"runpy.run_path({SCRIPT!r}, run_name='__main__'); "
        "assert not {'torch', 'timm', 'torchvision'} & set(sys.modules), 'serve_web.py imported torch'"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, project["model"], str(tmp_path / "site")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert os.path.isfile(tmp_path / "site" / "model.json")


def test_ctrl_c_stops_serving_in_one_line_with_connections_open(project, tmp_path):
    """Connections that stay silent for up to an hour (--timeout 3600): a browser's open connection, 100 requests
    whose headers never end. They hold up neither another request nor Ctrl-C."""
    require_node_modules()
    args = ["--model", project["model"], "--site-dir", tmp_path / "site", "--timeout", 3600]
    proc, _, port, _ = start_server(*args, log=tmp_path / "log")
    idle = socket.create_connection(("127.0.0.1", port))
    partial = f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n".encode()
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(100)]
    for s in held:
        s.sendall(partial)
    assert request(dict(port=port), "/")[0] == 200 and all(still_open(s) for s in [idle, *held])
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)  # an hour's wait would end here
    for s in [idle, *held]:
        s.close()
    assert proc.returncode == 0 and read(tmp_path / "log").strip() == "stopped serving"
