"""
Serve the in-browser classifier: builds the page (web/, onnxruntime-web, the ONNX model) into site/ and serves it
on 127.0.0.1 (this computer only); the photo never leaves the browser. In full: docs/reference.md.

    npm ci                                   # once: fetches the pinned onnxruntime-web into node_modules/
    python serve_web.py                      # skin_model.onnx -> site/ -> http://127.0.0.1:8000/
    python serve_web.py --model other.onnx --port 0       # a free port
    python serve_web.py --no-serve --site-dir /tmp/page   # only build: a static copy to host anywhere
"""

from skinlesion import interrupts

if __name__ == "__main__":  # first, before the libraries load: a Ctrl-C while they do is one line, not a traceback
    interrupts.one_line_while_loading()

import gzip
import hashlib
import http.server
import json
import os
import re
import sys

import model
from skinlesion import answer, files, flags, folders, messages, metrics, model_file, quantise, reading
from skinlesion.card import MAX_CARD_BYTES, chosen_on

# -----------------------------------------------------------------------------
MODEL = "skin_model.onnx"  # ONNX file from export_onnx.py, with the outputs 'logits' and 'cam'
CARD = None  # the model card (markdown) published as model_card.md; None: the .md beside MODEL, if there is one
SITE_DIR = "site"  # folder the page is built into and served from; replaced as a whole (only if this script made it)
NODE_MODULES = "node_modules"  # where 'npm ci' put onnxruntime-web (relative: beside this script)
PORT = 8000  # port on 127.0.0.1, 0 to 65535 (0 picks a free one)
TIMEOUT = 10.0  # seconds a connection may stay silent (or a download stall) before it is closed; 0.1 to 3600
SERVE = True  # False (--no-serve): only build SITE_DIR
SMALL_MODEL = True  # run MODEL's int8 twin (export_onnx.py writes it) if made from MODEL and within tolerance
# -----------------------------------------------------------------------------

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(HERE, "web")  # the page's own files (index.html, style.css, app.js, preprocess.js, sw.js)
ORT_FILES = ("ort.wasm.bundle.min.mjs", "ort-wasm-simd-threaded.wasm")  # the wasm backend (its loader bundled)
PAGE_TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8", ".js": "text/javascript"}
TYPES = {
    **PAGE_TYPES,
    ".mjs": "text/javascript",
    ".wasm": "application/wasm",
    ".json": "application/json",
    ".onnx": "application/octet-stream",
    ".md": "text/markdown; charset=utf-8",
}
CARD_NAME = "model_card.md"
WORKER = "sw.js"  # the service worker: serve_web.py writes the build's id and files into it (worker_script)
WORKER_FILES = b"const FILES = {}; // serve_web.py writes {url: SHA-256} of the build here"
WORKER_BUILD = b'const BUILD = "unbuilt"; // serve_web.py writes the build id here'
COMPRESSIBLE = {".wasm", ".mjs", ".js", ".html", ".css", ".json", ".md", ".onnx"}  # served gzip-compressed if smaller
PAGE_CSP = (  # index.html's own policy (its <meta> tag), used if the page has none
    "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; img-src 'self' blob: data:; connect-src 'self'; "
    "style-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'"
)
HEADERS = {  # on every response, besides the Content-Security-Policy
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cache-Control": "no-cache",  # a rebuilt model is picked up on reload (the ETag saves the download)
}
MAX_REQUEST = 1 << 16  # bytes of request line and headers; a larger request is refused (431)
MAX_PAGE_BYTES = 200_000_000  # the largest file of the page or of onnxruntime-web read (its wasm: about 25 MB)
CHUNK = 1 << 18  # bytes per write: the timeout applies to each


def read_model(path):
    """The sidecar for the page from the ONNX file, checked as every script checks a model (model.load_onnx: valid
    metadata, finite weights, our architecture and outputs); raise UserError if the page could not use the file."""
    _, meta = model.load_onnx(path)
    if meta["interpolation"] != "bicubic":
        resizes = meta["interpolation"]
        raise messages.UserError(
            f"{messages.printable(path)} resizes with {resizes}; the page implements Pillow's bicubic only"
        )
    keys = [name for name, key in model_file.KEYS.items() if key.page]
    sidecar = {key: meta.get(key) for key in keys}
    op = meta.get("operating_point")
    sidecar.update(
        operating_point_text=op and metrics.operating_point_text(op, chosen_on(meta)[1]),  # validation or folds
        operating_point_warning=op and metrics.operating_point_warning(op),
    )
    return dict(sidecar, borderline_margin=answer.BORDERLINE, model_file="model.onnx")


def page_model(model_path, small):
    """(the ONNX file the page runs, what to say about it): MODEL's int8 twin where it passes every check a model
    file gets, was made from this very file and its comparison's numbers keep within tolerance (the rule,
    quantise.within_tolerance, recomputed here: its stored verdict is not trusted), else MODEL itself, with the
    reason."""
    twin = quantise.quantised_path(model_path)
    if not small:
        return model_path, "the full model (--no-small-model)"
    if files.file_kind(twin) == "missing":
        return model_path, f"the full model (no int8 twin {messages.printable(twin)}; export_onnx.py writes one)"
    _, meta, error = model.read_onnx(twin)  # a twin that is not a regular file is one of its errors
    if error:
        return model_path, f"the full model ({messages.printable(error)})"
    result = meta.get("quantised")
    if not isinstance(result, dict) or result.get("from_sha256") != files.file_sha256(model_path):
        return model_path, f"the full model ({messages.printable(twin)} was not made from this export; export again)"
    size, full_size = os.path.getsize(twin), os.path.getsize(model_path)
    networks = f" of {networks_text(meta)}" if meta.get("members") else ""
    said = f"{size / 1e6:.1f} MB, {size / full_size:.2f} of the full model; {quantise.weights_text(result)}"
    if not quantise.within_tolerance(result, bool(meta.get("familiarity"))):
        return model_path, (
            f"the full model{networks} ({full_size / 1e6:.1f} MB; its int8-weight twin, {said}, was "
            f"{quantise.comparison_text(result)})"
        )
    return twin, f"the int8-weight model{networks} ({said}): {quantise.comparison_text(result)}"


def networks_text(meta):
    """'the 5 fold networks averaged': what an ensemble's file runs (its members, AItraining.py --deploy ensemble)."""
    return f"the {meta['members']} fold networks averaged"


def ort_dist(node_modules):
    """onnxruntime-web's dist folder and version; raise UserError with how to install it if it is missing."""
    package = os.path.join(node_modules, "onnxruntime-web")
    dist = os.path.join(package, "dist")
    fix = f"run 'npm ci' in {messages.printable(HERE)} to install the pinned onnxruntime-web"
    if not all(os.path.isfile(os.path.join(dist, name)) for name in ORT_FILES):
        raise messages.UserError(f"{messages.printable(package)} not found (or incomplete); {fix}")
    path = os.path.join(package, "package.json")
    try:
        found = reading.parse_json(read_bytes(path, MAX_PAGE_BYTES, fix), path)
    except reading.Unreadable as e:  # not JSON, or nested too deeply
        raise messages.UserError(f"{e}; {fix}") from None
    version = found.get("version") if isinstance(found, dict) else None
    if not isinstance(version, str):
        raise messages.UserError(f"{messages.printable(path)} names no version; {fix}")
    return dist, messages.printable(version)


def card_path(card, model_path):
    """The model card to publish, or None: --card as given (it must be a file), else the .md beside the model."""
    if card is None:
        beside = os.path.splitext(model_path)[0] + ".md"
        kind = files.file_kind(beside)
        if kind not in (None, "missing"):
            print(f"note: {messages.printable(beside)} is {kind}, not a model card: none is published (--card FILE)")
        return beside if kind is None else None
    kind = files.file_kind(card)
    if kind == "missing":
        raise messages.UserError(
            f"--card {messages.printable(card)} not found; pass the model card's path, or leave --card out"
        )
    if kind:
        raise messages.UserError(f"--card {messages.printable(card)} is {kind}; pass the model card's markdown file")
    return card


def page_files():
    """{name: bytes} of the page: the .html, .css and .js files in web/ (links there are left out, said so)."""
    page, links = {}, []
    for name in sorted(os.listdir(SOURCE)):
        path = os.path.join(SOURCE, name)
        if name.startswith(".") or os.path.splitext(name)[1] not in PAGE_TYPES:
            continue
        if os.path.islink(path):
            links.append(name)
        elif files.file_kind(path) is None:
            page[name] = read_bytes(path, MAX_PAGE_BYTES, "restore web/ (git checkout web)")
    if links:
        messages.warn(
            f"left out {len(links)} links in {SOURCE} ({messages.first_few(links)}): the page is built from files"
        )
    if "index.html" not in page:
        raise messages.UserError(f"{SOURCE}/index.html not found; restore web/ (git checkout web)")
    return page


def read_bytes(path, most, fix):
    """The bytes of a regular file of at most most bytes (reading.read_bytes); fail with one line naming it, and
    saying how to fix it, otherwise."""
    try:
        return reading.read_bytes(path, most)
    except reading.Unreadable as e:
        raise messages.UserError(f"{e}; {fix}") from None
    except OSError as e:
        raise messages.UserError(f"{messages.printable(path)} cannot be read ({e.strerror or e}); {fix}") from None


def site_contents(model_path, card, node_modules, small=True):
    """({path in the build: bytes}, the sidecar, onnxruntime-web's version): everything the page needs, read
    and checked before anything is written; the model the page runs is MODEL or its int8 twin (page_model)."""
    model_path, variant = page_model(model_path, small)
    sidecar = dict(read_model(model_path), model_variant=variant)
    dist, version = ort_dist(node_modules)
    contents = page_files()
    for name in ORT_FILES:
        contents[f"vendor/{name}"] = read_bytes(
            os.path.join(dist, name), MAX_PAGE_BYTES, "run 'npm ci' to install it again"
        )
    contents["model.onnx"] = read_bytes(model_path, model_file.MAX_MODEL_BYTES, "pass --model PATH")
    sidecar["model_sha256"] = hashlib.sha256(contents["model.onnx"]).hexdigest()  # of the bytes the page gets
    sidecar["model_name"] = messages.printable(os.path.basename(model_path))  # which file they are (the card lists it)
    contents["model.json"] = json.dumps(sidecar, indent=1).encode()
    if card:
        contents[CARD_NAME] = read_bytes(card, MAX_CARD_BYTES, "pass the model card's markdown file (--card)")
        try:
            contents[CARD_NAME].decode("utf-8")
        except UnicodeDecodeError:
            raise messages.UserError(
                f"model card {messages.printable(card)} is not UTF-8 text; save it as UTF-8"
            ) from None
    sidecar["build"] = worker_script(contents)
    return contents, sidecar, version


def worker_script(contents):
    """Write into contents' service worker (sw.js) {url: SHA-256} of every other file and the build id, and return
    the id: the SHA-256 of that list (so of every file's bytes, the model's among them), the name of the worker's
    cache. Another model is another build: the worker caches it apart and deletes the old cache."""
    if WORKER not in contents:
        raise messages.UserError(f"{SOURCE}/{WORKER} not found; restore web/ (git checkout web)")
    script = contents[WORKER]
    if script.count(WORKER_FILES) != 1 or script.count(WORKER_BUILD) != 1:
        raise messages.UserError(
            f"{SOURCE}/{WORKER} has no place for the build's files; restore web/ (git checkout web)"
        )
    files_sha256 = {  # index.html as "./": the URL the page is opened at, so the HTTP cache's copy answers
        ("./" if name == "index.html" else name): hashlib.sha256(data).hexdigest()
        for name, data in sorted(contents.items())
        if name != WORKER
    }
    listed = json.dumps(files_sha256, sort_keys=True)
    build_id = hashlib.sha256(listed.encode()).hexdigest()[:16]
    script = script.replace(WORKER_FILES, b"const FILES = " + listed.encode() + b";")
    contents[WORKER] = script.replace(WORKER_BUILD, b'const BUILD = "' + build_id.encode() + b'";')
    return build_id


def build(site_dir, contents):
    """Write contents into a new folder that then replaces site_dir as a whole (folders.replaced_folder): every
    file is created in a fresh folder, so no link can be followed."""
    try:
        with folders.replaced_folder(site_dir, "serve_web.py", "site") as tmp:
            for name, data in contents.items():
                path = os.path.join(tmp, *name.split("/"))
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "xb") as f:
                    f.write(data)
    except OSError as e:
        raise messages.UserError(
            f"cannot build {messages.printable(site_dir)} ({e.strerror or e}); pass --site-dir with a writable folder"
        ) from None


def page_csp(index_html):
    """The Content-Security-Policy of index.html's <meta> tag (PAGE_CSP if it has none), plus frame-ancestors
    'none' (a <meta> policy cannot say it)."""
    found = re.search(rb'<meta\s+http-equiv="Content-Security-Policy"\s+content="([^"]*)"', index_html, re.I)
    policy = found.group(1).decode() if found else PAGE_CSP
    if "frame-ancestors" not in policy:
        policy += "; frame-ancestors 'none'"
    return policy


def etag_of(data):
    return '"' + hashlib.sha256(data).hexdigest()[:32] + '"'


def url_table(contents):
    """{url path: (content type, {encoding: (bytes, ETag)})}: the allow-list the server answers from ("/" is
    index.html); each file as it is ("identity") and, where that is smaller, gzip-compressed once here (level 9,
    mtime 0: the same bytes for the same file), each encoding with an ETag of its own."""
    table = {}
    for name, data in contents.items():
        extension = os.path.splitext(name)[1]
        encodings = {"identity": (data, etag_of(data))}
        if extension in COMPRESSIBLE:
            packed = gzip.compress(data, compresslevel=9, mtime=0)
            if len(packed) < len(data):
                encodings["gzip"] = (packed, etag_of(packed))
        table["/" + name] = (TYPES[extension], encodings)
    table["/"] = table["/index.html"]
    return table


def accepts_gzip(accept_encoding):
    """Whether a request's Accept-Encoding header allows gzip (RFC 9110): gzip (or x-gzip) with a q-value above 0,
    else '*' with one; 'gzip;q=0' refuses it whatever '*' says; no header, or one that cannot be read: no."""
    weights = {}
    for item in (accept_encoding or "").split(","):
        coding, *parameters = [part.strip() for part in item.split(";")]
        q = 1.0
        for parameter in parameters:
            key, _, value = parameter.partition("=")
            if key.strip().lower() == "q":
                q = float(value) if re.fullmatch(r"\s*(0(\.\d{0,3})?|1(\.0{0,3})?)\s*", value) else 0.0
        weights[{"x-gzip": "gzip"}.get(coding.lower(), coding.lower())] = q
    if "gzip" in weights:
        return weights["gzip"] > 0
    return weights.get("*", 0) > 0


def etag_matches(if_none_match, etag):
    """Whether an If-None-Match header names etag (weakly compared, as RFC 9110 says for it), or is '*'."""
    tags = [tag.strip().removeprefix("W/") for tag in (if_none_match or "").split(",")]
    return etag in tags or "*" in tags


class BoundedReader:
    """A request's stream that reads as ended one byte after MAX_REQUEST (a request is its line and headers: the
    server reads no body): left == 0 means too large. A client cannot make the server hold more."""

    def __init__(self, stream):
        self.stream, self.left = stream, MAX_REQUEST + 1

    def readline(self, size=-1):
        if size < 0 or size > self.left:
            size = self.left
        line = self.stream.readline(size)
        self.left -= len(line)
        return line

    def close(self):
        self.stream.close()


def quiet(client, text):
    """One log line on stderr (one write: lines of threads never mix), printable whatever the client sent."""
    sys.stderr.write(f"{client}: {messages.printable(text)}\n")


class Handler(http.server.BaseHTTPRequestHandler):
    """GET and HEAD for the files of server.table and nothing else; the Host must be this server."""

    server_version = "serve_web.py"
    protocol_version = "HTTP/1.1"  # a browser revalidates by ETag only an HTTP/1.1 response; each closes its connection

    def version_string(self):
        return self.server_version  # no Python version

    def setup(self):
        self.timeout = self.server.connection_timeout
        super().setup()
        self.rfile = BoundedReader(self.rfile)

    def parse_request(self):
        if not super().parse_request():
            return False
        if self.rfile.left == 0:
            self.send_error(431, f"request larger than {MAX_REQUEST} bytes")
            return False
        host = self.headers.get("Host", "")
        if host.lower() not in self.server.hosts:
            self.send_error(421, f"Host {host!r} is not this server")
            return False
        return True

    def do_GET(self):
        self.respond(send_body=True)

    def do_HEAD(self):
        self.respond(send_body=False)

    def respond(self, send_body):
        entry = self.server.table.get(self.path.split("?", 1)[0])
        if entry is None:
            self.send_error(404, "not a file of this page")
            return
        kind, encodings = entry
        encoding = "gzip" if "gzip" in encodings and accepts_gzip(self.headers.get("Accept-Encoding")) else "identity"
        data, etag = encodings[encoding]
        try:
            if etag_matches(self.headers.get("If-None-Match"), etag):
                self.send_response(304)
                self.send_header("ETag", etag)
                self.send_header("Vary", "Accept-Encoding")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            if encoding == "gzip":
                self.send_header("Content-Encoding", "gzip")
            self.send_header("ETag", etag)
            self.send_header("Vary", "Accept-Encoding")
            self.end_headers()
            for start in range(0, len(data) if send_body else 0, CHUNK):
                self.wfile.write(data[start : start + CHUNK])
        except (BrokenPipeError, ConnectionResetError, TimeoutError) as e:
            quiet(self.client_address[0], f"aborted: {self.requestline} ({type(e).__name__})")
            self.close_connection = True

    def send_error(self, code, message=None, explain=None):
        quiet(self.client_address[0], f"{int(code)} {message or self.responses[code][0]}: {self.requestline}")
        super().send_error(code, message, explain)

    def end_headers(self):
        if not self.close_connection:  # send_error said it already
            self.send_header("Connection", "close")  # one request per connection: the timeouts stay simple
        self.send_header("Content-Security-Policy", self.server.csp)
        for name, value in HEADERS.items():
            self.send_header(name, value)
        super().end_headers()

    def log_request(self, code="-", size="-"):
        pass  # a good request is not logged; send_error logs a bad one

    def log_error(self, format, *args):
        """The server's own error lines: send_error's are logged there; a timeout only if a request was coming."""
        if args and isinstance(args[-1], TimeoutError) and self.rfile.left <= MAX_REQUEST:
            quiet(self.client_address[0], f"timed out after {self.timeout:g} s in the middle of a request")


class Server(http.server.ThreadingHTTPServer):
    """One thread per connection; an error a connection raises is one line, never a traceback."""

    block_on_close = False  # Ctrl-C does not wait for open connections

    def handle_error(self, request, client_address):
        error = sys.exc_info()[1]
        quiet(client_address[0], f"connection dropped ({type(error).__name__}: {error})")


def serve(contents, port, timeout):
    """Serve contents on 127.0.0.1 until Ctrl-C (never on other interfaces: the page is for this computer)."""
    try:
        server = Server(("127.0.0.1", port), Handler)
    except OSError as e:
        raise messages.UserError(
            f"cannot serve on 127.0.0.1:{port} ({e.strerror}); pass --port 0 for a free port"
        ) from None
    port = server.server_address[1]
    server.hosts = {f"127.0.0.1:{port}", f"localhost:{port}"} | ({"127.0.0.1", "localhost"} if port == 80 else set())
    server.table, server.csp = url_table(contents), page_csp(contents["index.html"])
    server.connection_timeout = timeout
    try:
        print(f"serving the page at http://127.0.0.1:{port}/ (this computer only; Ctrl-C stops)", flush=True)
        server.serve_forever()
    except KeyboardInterrupt:
        print("\nstopped serving", file=sys.stderr)
    finally:
        server.server_close()


def main(argv=None):
    args = flags.parse_flags(globals(), argv)
    node_modules = os.path.join(HERE, args.node_modules)  # an absolute --node-modules stays as it is
    card = card_path(args.card, args.model)
    folders.check_replaceable(args.site_dir, "--site-dir", "serve_web.py", "site")
    folders.check_output_folder(args.site_dir, "--site-dir", inputs=[args.model, card, SOURCE, node_modules])
    flags.check_writable(os.path.dirname(os.path.abspath(args.site_dir)), "--site-dir", folder=True)
    contents, sidecar, version = site_contents(args.model, card, node_modules, args.small_model)  # checked, unwritten
    build(args.site_dir, contents)
    facts = [f"{sidecar['image_size']} px", f"threshold {sidecar['threshold']:.3f}"]
    if sidecar["at_chance"]:
        facts.append("at chance on validation")
    card_text = f"model card {messages.printable(card)}" if card else "no model card"
    print(
        f"built {messages.printable(args.site_dir)}: {messages.printable(args.model)} ({', '.join(facts)}), "
        f"{card_text}, onnxruntime-web {version} (wasm), build {sidecar['build']}; the page runs "
        f"{sidecar['model_variant']}",
        flush=True,
    )
    if args.serve:
        serve(contents, args.port, args.timeout)


if __name__ == "__main__":
    sys.exit(interrupts.run_script(main))
