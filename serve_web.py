"""
Serve the in-browser classifier: a static page (web/) that classifies a skin photo with onnxruntime-web, in
the browser; the photo never leaves it. This script puts what the page needs into web/ and serves it on
127.0.0.1 (this computer only).

    npm ci                                   # once: fetches the pinned onnxruntime-web into node_modules/
    python serve_web.py                      # skin_model.onnx -> http://127.0.0.1:8000/
    python serve_web.py --model other.onnx --port 0      # a free port
    python serve_web.py --no-serve --web-dir /tmp/page   # only build: copy the page and its files there
    make web                                 # npm ci, then this

It copies into WEB_DIR: the wasm backend of onnxruntime-web (vendor/: ort.wasm.min.mjs,
ort-wasm-simd-threaded.mjs and .wasm), the ONNX model (model.onnx, from export_onnx.py: it needs the 'cam'
output) and web/model.json, the model's preprocessing, threshold and flags that the page reads. Torch-free:
the model's metadata is read with onnxruntime. Open the page over http (file:// cannot load the model).
"""

import functools
import http.server
import json
import os
import shutil
import sys

import model
from skinlesion import cli, files

# -----------------------------------------------------------------------------
MODEL = "skin_model.onnx"  # ONNX file from export_onnx.py, with the outputs 'logits' and 'cam'
WEB_DIR = "web"  # folder to build and serve (relative: beside this script); another folder gets a copy of the page
NODE_MODULES = "node_modules"  # where 'npm ci' put onnxruntime-web (relative: beside this script)
PORT = 8000  # port on 127.0.0.1; 0 picks a free one
SERVE = True  # False (--no-serve): only put the files into WEB_DIR
# -----------------------------------------------------------------------------

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(HERE, "web")  # the page's own files (index.html, style.css, app.js, preprocess.js)
GENERATED = ("vendor", "model.onnx", "model.json")  # what this script writes into WEB_DIR (git ignores them)
ORT_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")  # the wasm backend
META_KEYS = ("classes", "image_size", "mean", "std", "interpolation", "crop_pct", "threshold")


def read_model(path):
    """The sidecar for the page from the ONNX file, checked as every script checks a model (model.load_onnx: valid
    metadata, finite weights); die if the page could not use the file."""
    session, meta = model.load_onnx(path)
    if "cam" not in [o.name for o in session.get_outputs()]:
        cli.die(f"{path} has no 'cam' output (the heat map); export it again with this version of export_onnx.py")
    if meta["interpolation"] != "bicubic":
        cli.die(f"{path} resizes with {meta['interpolation']}; the page implements Pillow's bicubic only")
    keys = (
        "classes",
        "image_size",
        "mean",
        "std",
        "interpolation",
        "crop_pct",
        "threshold",
        "at_chance",
        "val_auc_ci95",
    )
    return dict({key: meta.get(key) for key in keys}, borderline_margin=model.BORDERLINE, model_file="model.onnx")


def ort_dist(node_modules):
    """onnxruntime-web's dist folder and version; die with how to install it if it is missing."""
    package = os.path.join(node_modules, "onnxruntime-web")
    dist = os.path.join(package, "dist")
    if not all(os.path.isfile(os.path.join(dist, name)) for name in ORT_FILES):
        cli.die(f"{package} not found (or incomplete); run 'npm ci' in {HERE} to install the pinned onnxruntime-web")
    with open(os.path.join(package, "package.json")) as f:
        return dist, json.load(f)["version"]


def build(model_path, web_dir, node_modules):
    """Put everything the page needs into web_dir: the page (if web_dir is not web/), vendor/, the model, model.json."""
    sidecar = read_model(model_path)  # first: a bad model stops before anything is written
    dist, version = ort_dist(node_modules)
    try:
        os.makedirs(os.path.join(web_dir, "vendor"), exist_ok=True)
        if os.path.realpath(web_dir) != os.path.realpath(SOURCE):
            for name in os.listdir(SOURCE):
                if name not in GENERATED and os.path.isfile(os.path.join(SOURCE, name)):
                    shutil.copyfile(os.path.join(SOURCE, name), os.path.join(web_dir, name))
        for name in ORT_FILES:
            shutil.copyfile(os.path.join(dist, name), os.path.join(web_dir, "vendor", name))
        shutil.copyfile(model_path, os.path.join(web_dir, "model.onnx"))
        files.write_text(os.path.join(web_dir, "model.json"), json.dumps(sidecar, indent=1))
    except OSError as e:
        cli.die(f"cannot write into {web_dir} ({e.strerror}); pass --web-dir with a writable folder")
    print(
        f"built {web_dir}: {model_path} ({sidecar['image_size']} px, threshold {sidecar['threshold']:.3f}"
        + (", at chance on validation" if sidecar["at_chance"] else "")
        + f"), onnxruntime-web {version} (wasm)",
        flush=True,
    )


class Handler(http.server.SimpleHTTPRequestHandler):
    """Static files with the types the page needs (ES modules, wasm), not cached, no request log."""

    extensions_map = {
        **http.server.SimpleHTTPRequestHandler.extensions_map,
        ".js": "text/javascript",
        ".mjs": "text/javascript",
        ".wasm": "application/wasm",
        ".json": "application/json",
        ".onnx": "application/octet-stream",
    }

    def end_headers(self):
        self.send_header("Cache-Control", "no-cache")  # a rebuilt model is picked up on reload
        self.send_header("X-Content-Type-Options", "nosniff")
        super().end_headers()

    def log_message(self, format, *args):
        pass


def serve(web_dir, port):
    """Serve web_dir on 127.0.0.1 until Ctrl-C (never on other interfaces: the page is for this computer)."""
    try:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), functools.partial(Handler, directory=web_dir))
    except OSError as e:
        cli.die(f"cannot serve on 127.0.0.1:{port} ({e.strerror}); pass --port 0 for a free port")
    try:
        print(
            f"serving the page at http://127.0.0.1:{server.server_address[1]}/ (this computer only; Ctrl-C stops)",
            flush=True,
        )
        server.serve_forever()
    except KeyboardInterrupt:
        print("\nstopped serving", file=sys.stderr)
    finally:
        server.server_close()


def main(argv=None):
    args = cli.parse_flags(globals(), argv)
    cli.check(0 <= args.port <= 65535, "--port", args.port, "use a port from 0 (a free one) to 65535")
    web_dir = os.path.join(HERE, args.web_dir)  # an absolute --web-dir stays as it is
    cli.check_writable(web_dir, "--web-dir", folder=True)
    build(args.model, web_dir, os.path.join(HERE, args.node_modules))
    if args.serve:
        serve(web_dir, args.port)


if __name__ == "__main__":
    cli.run_script(main)
