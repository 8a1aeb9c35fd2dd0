"""
What the scripts share, each concept once: the EfficientNet-B0 classifier and its two training recipes,
command-line flags, finding and reading photos, the dataset folder layout, the preprocessing, the metrics,
and what a model file (.pth or .onnx) holds and how it is checked.

    import model
    net, imagenet = model.build_model(pretrained=True)   # timm efficientnet_b0, 2-class head
    net, meta = model.load_checkpoint("skin_model.pth")  # checked: finite weights, valid metadata

Not a script: every script imports it. torch, torchvision and timm are imported inside the functions that
use them, so `--help` and predict.py's ONNX path start in a fraction of a second instead of ~4 s.
"""
import argparse
import contextlib
import glob
import json
import math
import os
import re
import shutil
import stat
import sys
import tempfile
import warnings

import numpy as np
from PIL import Image, ImageOps

# -----------------------------------------------------------------------------
MODEL_NAME = "efficientnet_b0"  # timm architecture
CLASSES = ["benign", "malignant"]  # folder names = class indices; malignant is the positive class
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")  # what counts as an image
MAX_IMAGE_PIXELS = 200_000_000  # larger images are refused as possible decompression bombs
BORDERLINE = 0.02  # a photo whose P(malignant) is this close to the threshold is reported as borderline
RECIPES = {  # how AItraining.py trains, by starting point; each knob is also one of its flags
    "finetune": dict(optimizer="adam", lr=1e-4, weight_decay=0.0, warmup=0.0, schedule="cosine", epochs=20,
                     label_smoothing=0.1, drop_path=0.2, class_weights=True, patience=5),
    "scratch": dict(optimizer="adamw", lr=3e-3, weight_decay=0.05, warmup=0.05, schedule="cosine", epochs=100,
                    label_smoothing=0.1, drop_path=0.2, class_weights=True, patience=0),
}
# -----------------------------------------------------------------------------
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
warnings.simplefilter("error", Image.DecompressionBombWarning)  # over the limit: an error, on purpose
TTA_FLIPS = [(), (-1,), (-2,), (-2, -1)]  # test-time augmentation: the photo and its flips (axes of C, H, W)


def die(message):
    """A user's mistake: one line saying what is wrong and how to fix it, exit 1, no traceback."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


def run_script(main, interrupted="interrupted"):
    """Run a script's main: Ctrl-C is one line and exit code 130; an OSError that escaped the script's own
    checks (an unreadable photo reported by a DataLoader worker, a full disk) is one error line."""
    try:
        main()
    except KeyboardInterrupt:
        print(f"\n{interrupted}", file=sys.stderr)
        sys.exit(130)
    except OSError as e:
        die(str(e).strip().splitlines()[-1].removeprefix("OSError: "))


def warn(message):
    print(f"warning: {message}", file=sys.stderr)


def describe(values, most=6):
    """'a 3, b 1, ...': the most common values with their counts ('' shown as 'empty')."""
    import pandas as pd
    counts = pd.Series(values).value_counts()
    return ", ".join(f"{k or 'empty'} {n}" for k, n in counts[:most].items()) + ", ..." * (len(counts) > most)


def listed(items, most=3):
    """'a, b, c, ...': the first few items."""
    return ", ".join(list(items)[:most]) + ", ..." * (len(items) > most)


def shown(path):
    """A path as printable text: bytes that are not UTF-8 (a file name from another system) as \\xNN."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


# ---------------------------------------------------------------------------- flags
def constant_comments(script):
    """{NAME: its comment} for the `NAME = value  # comment` lines of a script."""
    with open(script, encoding="utf-8") as f:
        return dict(re.findall(r"^([A-Z][A-Z0-9_]*) = .*?  # (.*)$", f.read(), re.M))


def parse_flags(constants, argv=None, positional=None, types=None):
    """args for a script: one flag per UPPER_CASE constant of its globals(), default taken from the constant,
    help from its comment (EPOCHS -> --epochs, PRETRAINED -> --pretrained/--no-pretrained, a list -> one or
    more values, None -> the type in types, else a string; the word 'none' gives None). positional: a
    (name, help) argument taking one or more values. args.given holds the flags typed on the command line."""
    comments = constant_comments(constants["__file__"])
    parsers = [argparse.ArgumentParser(description=constants["__doc__"],
                                       formatter_class=argparse.RawDescriptionHelpFormatter) for _ in range(2)]
    for parser, default in zip(parsers, [True, False]):
        if positional:
            parser.add_argument(positional[0], nargs="+", help=positional[1])
        for name, value in constants.items():
            if not name.isupper() or name.startswith("_") or callable(value) or isinstance(value, (dict, type(sys))):
                continue
            kind = (types or {}).get(name) or (type(value[0]) if isinstance(value, list) and value else
                                               str if value is None else type(value))
            kw = dict(default=value if default else argparse.SUPPRESS, dest=name.lower(),
                      help=comments.get(name, "").replace("%", "%%") + " (default: %(default)s)")
            if kind is bool:
                kw.update(action=argparse.BooleanOptionalAction)
            else:
                def convert(text, kind=kind):
                    return None if text.lower() == "none" else kind(text)
                convert.__name__ = kind.__name__  # argparse then says "invalid int value: 'abc'"
                kw.update(metavar=name, type=convert, nargs="+" if isinstance(value, list) else None)
            parser.add_argument("--" + name.lower().replace("_", "-"), **kw)
    args = parsers[0].parse_args(argv)
    args.given = set(vars(parsers[1].parse_known_args(argv)[0])) - {positional and positional[0]}
    return args


def check(ok, flag, value, wanted):
    """die unless ok: '--epochs 0: use a whole number >= 1'."""
    if not ok:
        die(f"{flag} {value}: {wanted}")


def in_range(value, low, high=math.inf):
    return isinstance(value, (int, float)) and math.isfinite(value) and low <= value <= high


def check_writable(path, flag, folder=False):
    """Before any slow work: die unless a file (or, with folder, files in the folder) can be written at path:
    tried with a real file in the nearest existing folder (permissions, read-only disks, root alike)."""
    target = os.path.abspath(path if folder else os.path.dirname(os.path.abspath(path)))
    if os.path.exists(path) and os.path.isdir(path) != folder:
        die(f"{flag} {path} is {'a file' if folder else 'a folder'}; pass {'a folder' if folder else 'a file name'}")
    while not os.path.exists(target):  # a folder the script will create: its parent must take it
        target = os.path.dirname(target)
    if not os.path.isdir(target):
        die(f"{flag} {path}: {target} is a file, not a folder; pass another path")
    try:
        fd, probe = tempfile.mkstemp(dir=target, prefix=".write-test-")
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        die(f"{flag} {path}: cannot write in {target} ({e.strerror}); pass a path in a writable folder")


# ---------------------------------------------------------------------------- files
def is_image_file(path):
    return os.path.splitext(str(path))[1].lower() in IMAGE_EXTS


def file_kind(path):
    """None for a regular file (or a link to one), else what it is: a photo is read only from a regular file
    (opening a named pipe would wait forever)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return "missing"
    return None if stat.S_ISREG(mode) else "a folder" if stat.S_ISDIR(mode) else "a named pipe" \
        if stat.S_ISFIFO(mode) else "a device or socket, not a regular file"


def find_images(paths):
    """(image files, [(file, why skipped)]) under paths (files and folders, searched recursively, sorted);
    a file named directly is tried whatever its extension. Dies on a path that does not exist."""
    images, skipped = [], []
    for path in paths:
        kind = file_kind(path)
        if kind == "missing":
            die(f"{shown(path)} not found; pass an image file or a folder of images")
        if kind not in (None, "a folder"):
            die(f"{shown(path)} is {kind}; pass an image file or a folder of images")
        found = [path] if kind is None else sorted(os.path.join(root, n) for root, _, names in
                                                  os.walk(path, followlinks=True) for n in names)
        for file in found:
            why = file_kind(file) or (None if kind is None else "a Grad-CAM picture written by predict.py --explain"
                                      if file.endswith("_gradcam.png") else None if is_image_file(file) else
                                      f"not an image file ({', '.join(IMAGE_EXTS)})")
            (skipped.append((file, why)) if why else images.append(file))
    return images, skipped


def class_folders(folder, what="data folder"):
    """{class: sorted image files} of folder/<benign|malignant>/ and the other files found there; dies with
    one line on a wrong layout (missing, a class folder absent or empty, another folder beside them)."""
    if not os.path.isdir(folder):
        die(f"{what} {folder} not found; make it with 'python prepare_dataset.py' or pass another folder")
    found = sorted(e.name for e in os.scandir(folder) if e.is_dir())
    missing, extra = [c for c in CLASSES if c not in found], [d for d in found if d not in CLASSES]
    if missing or extra:
        what = "no " + " or ".join(m + "/" for m in missing) if missing else "the extra " + ", ".join(e + "/" for e in extra)
        die(f"{folder} has {what}; it must hold exactly one folder per class, "
            f"{' and '.join(c + '/' for c in CLASSES)} (move the others out)")
    files, others = {}, []
    for c in CLASSES:
        files[c], skipped = find_images([os.path.join(folder, c)])
        others += skipped
    empty = [c + "/" for c in CLASSES if not files[c]]
    if empty:
        die(f"{folder}: no images in {' and '.join(empty)}; both classes are needed (re-run prepare_dataset.py)")
    return files, others


def remove_stale_temporaries(path):
    """Remove <path>.tmp<pid> files left by killed processes (a running process keeps its own)."""
    folder = os.path.dirname(os.path.abspath(path))
    for name in os.listdir(folder) if os.path.isdir(folder) else []:
        match = re.fullmatch(re.escape(os.path.basename(path)) + r"\.tmp(\d+)", name)
        if match and not pid_alive(int(match.group(1))):
            os.remove(os.path.join(folder, name))


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # alive, owned by someone else
        pass
    return True


def atomic_write(path, write):
    """write(temporary path) beside path, then rename it over path: a crash, a kill or a full disk never
    leaves a half-written file where a good one was. A failed write is one line naming the file."""
    remove_stale_temporaries(path)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        write(tmp)
        os.replace(tmp, path)
    except OSError as e:
        die(f"could not write {shown(path)} ({e.strerror or e}); free some disk space or pass another path")
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def worker_pool(workers):
    """A process pool whose workers ignore Ctrl-C (the main process handles it, once), or None-yielding
    context for 1 worker. Ctrl-C is held back while the workers are forked: arriving inside a fork hook it
    would be lost."""
    import signal
    from contextlib import nullcontext
    from multiprocessing import Pool
    if workers == 1:
        return nullcontext()
    hold = getattr(signal, "pthread_sigmask", lambda how, signals: None)  # POSIX only; Windows does not fork
    hold(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        return Pool(workers, signal.signal, (signal.SIGINT, signal.SIG_IGN))
    finally:
        hold(signal.SIG_UNBLOCK, {signal.SIGINT})


def file_sha256(path):
    import hashlib
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@contextlib.contextmanager
def replaced_folder(path, script):
    """with replaced_folder(path, script) as tmp: the block writes a new folder tmp (path.tmp-<pid>), which
    replaces path when the block ends without an error; an error, a kill or Ctrl-C leave path as it was. One run
    per parent folder (an exclusive flock, where the system has one): a second dies with one line. Leftovers of
    killed runs are removed once the lock is held; a swap cut short between its two renames is put back."""
    folder, tmp, old = os.path.dirname(os.path.abspath(path)), f"{path}.tmp-{os.getpid()}", f"{path}.old-{os.getpid()}"
    lock = None
    try:
        import fcntl  # not on Windows
        lock = os.open(folder, os.O_RDONLY)
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(lock)
        die(f"another {script} run is writing in {shown(folder)}; wait for it to finish")
    except (ImportError, OSError):  # Windows, a file system without locks: run unlocked
        lock = lock is not None and os.close(lock)
    try:
        for left in sorted(glob.glob(glob.escape(path) + ".old-*")):
            if os.path.lexists(path):
                shutil.rmtree(left)
            else:
                os.rename(left, path)
                print(f"restored {path} from {left}, left by a run killed while swapping")
        for left in glob.glob(glob.escape(path) + ".tmp-*"):
            pid = left.rsplit("-", 1)[1]
            if pid.isdigit() and (lock or not pid_alive(int(pid))):
                shutil.rmtree(left)
        os.makedirs(tmp)
        yield tmp
        if os.path.lexists(path):
            os.rename(path, old)
        os.rename(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if lock:
            os.close(lock)


def read_table(path, columns, what):
    """The named columns of a CSV file, as strings. What Excel saves is read too, with a warning: UTF-16 ('Unicode
    Text'), Windows-1252, fields separated by semicolons or tabs (told from the header line). Anything else that
    is not CSV text (binary data, a folder, a named pipe: never opened) dies with one line."""
    import pandas as pd
    if file_kind(path):
        die(f"{path} is {file_kind(path)}, not a CSV file; it must be {what}")
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    utf16, separators = head.startswith((b"\xff\xfe", b"\xfe\xff")), {",": "commas", ";": "semicolons", "\t": "tabs"}
    if b"\0" in head and not utf16:  # an image, an archive
        die(f"{path} holds binary data, not CSV text; it must be {what}")
    sep = max(separators, key=head.decode("utf-16" if utf16 else "utf-8", "replace").split("\n")[0].count)
    if utf16 or sep != ",":
        warn(f"{path} is {'UTF-16 ' * utf16}text with {separators[sep]} between fields (as Excel saves it); read it so")
    read = lambda encoding: pd.read_csv(path, sep=sep, usecols=lambda c: c in columns, dtype=str,
                                        keep_default_na=False, encoding=encoding)
    try:
        try:
            return read("utf-16" if utf16 else "utf-8-sig")
        except UnicodeDecodeError:  # e.g. "Müller" in cp1252
            warn(f"{path} is not UTF-8; read it as Windows-1252 (cp1252), as Excel saves CSV")
            return read("cp1252")
    except (OSError, ValueError) as e:
        die(f"cannot read {path} as CSV ({type(e).__name__}); it must be {what}")


def write_text(path, text):
    def write(tmp):
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)
    atomic_write(path, write)


# ---------------------------------------------------------------------------- photos
def load_image(path, min_side=None):
    """Open an image as upright RGB. With min_side, let Pillow's JPEG draft mode decode at a reduced scale
    that still leaves the shorter side >= min_side (much faster on multi-megapixel photos). Raises OSError
    (unreadable, truncated, not an image, not a regular file) or DecompressionBombError/Warning."""
    kind = file_kind(path)
    if kind:
        raise OSError(f"{kind}, not a photo")
    with Image.open(path) as img:
        if min_side and img.format == "JPEG":
            w, h = img.size
            scale = max(min_side / min(w, h), 1 / 8)
            img.draft("RGB", (max(1, round(w * scale)), max(1, round(h * scale))))
        img = ImageOps.exif_transpose(img)
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit grey PNG: the high byte, as browsers decode it
            img = Image.fromarray((np.asarray(img, dtype=np.int64) >> 8).clip(0, 255).astype(np.uint8))
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            background = Image.new("RGB", img.size, (255, 255, 255))  # flatten transparency on white
            background.paste(img.convert("RGBA"), mask=img.convert("RGBA").getchannel("A"))
            return background
        return img.convert("RGB")


def try_load_image(path):
    """(upright RGB image, None), or (None, why it could not be read): each caller keeps its own policy."""
    try:
        return load_image(path), None
    except Exception as e:  # OSError, DecompressionBombError, ...: not a readable image, whatever the cause
        first = str(e).splitlines()[0] if str(e) else ""
        return None, f"not a readable image ({type(e).__name__}{': ' + first if first else ''})"


def center_crop(img, size, short, interpolation):
    """The shorter side resized to short (the longer in proportion, rounded down) with Pillow's
    interpolation, then the centre size x size (offsets rounded as torchvision does, half to even)."""
    w, h = img.size
    new = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    img = img.resize(new, {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}[interpolation])
    left, top = round((new[0] - size) / 2.0), round((new[1] - size) / 2.0)
    return img.crop((left, top, left + size, top + size))


def eval_crop(img, cfg):
    """What the model sees of a photo: shorter side to int(size / crop_pct), centre size x size (timm's
    evaluation transform, in Pillow alone: the recipe a consumer outside Python must follow)."""
    size = cfg["input_size"][-1]
    return center_crop(img, size, int(size / cfg["crop_pct"]), cfg["interpolation"])


def preprocess(img, cfg):
    """eval_crop scaled to [0, 1] and normalised: float32 (3, size, size), for onnxruntime and PyTorch alike."""
    x = np.asarray(eval_crop(img, cfg), dtype=np.float32) / 255.0
    x = (x - np.array(cfg["mean"], dtype=np.float32)) / np.array(cfg["std"], dtype=np.float32)
    return x.transpose(2, 0, 1).copy()


class Photos:
    """uint8 (3, side, side) centre crops of photos whose shorter side is resized to short, each with why it
    could not be read ('' if it could; the crop is then zeros), for DataLoader workers: what AItraining.py
    caches or streams, and what evaluate.py scores. Each caller keeps its own policy for unreadable photos."""

    def __init__(self, paths, side, short, interpolation):
        self.paths, self.side, self.short, self.interpolation = paths, side, short, interpolation

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        img, why = try_load_image(self.paths[i])
        if img is None:
            return np.zeros((3, self.side, self.side), np.uint8), why
        return np.asarray(center_crop(img, self.side, self.short, self.interpolation)).transpose(2, 0, 1).copy(), ""


def one_thread(worker_id):
    """DataLoader worker_init_fn: one torch thread per worker, so workers and the main process do not fight
    over the cores (a module-level function: it must pickle where workers are spawned, as on macOS)."""
    import torch
    torch.set_num_threads(1)


def photo_loader(photos, batches, num_workers, device):
    """A DataLoader of (uint8 crops, whys) batches of Photos; batches: a list of index lists that the caller
    may refill before each pass (the workers persist), drawn with its own generator (never the global RNG)."""
    import torch
    from torch.utils.data import DataLoader
    return DataLoader(photos, batch_sampler=batches, num_workers=num_workers, worker_init_fn=one_thread,
                      persistent_workers=num_workers > 0, pin_memory=device.type == "cuda", generator=torch.Generator())


def normalise(x, cfg):
    """A uint8 (or [0, 1] float) batch to the network's input on its device, as preprocess does, channels_last."""
    import torch
    x = x.float() / 255 if x.dtype == torch.uint8 else x
    mean, std = (torch.tensor(cfg[k], device=x.device, dtype=torch.float32)[:, None, None] for k in ("mean", "std"))
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


def softmax_malignant(logits):
    """P(malignant) per row of (n, 2) logits, in float64 numpy."""
    logits = np.asarray(logits, dtype=np.float64)
    p = np.exp(logits - logits.max(1, keepdims=True))
    return (p / p.sum(1, keepdims=True))[:, CLASSES.index("malignant")]


def is_probability(p):
    """Elementwise: a finite number in [0, 1]. Anything else from a model is an error, never a label."""
    p = np.asarray(p, dtype=float)
    return np.isfinite(p) & (p >= 0) & (p <= 1)


# ---------------------------------------------------------------------------- the network
def pick_device():
    """CUDA, then Apple MPS, then CPU."""
    import torch
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def build_model(pretrained=True, weights_file=None, num_classes=len(CLASSES), drop_path=0.0):
    """(timm efficientnet_b0 with a num_classes head, whether it holds ImageNet weights). weights_file (a
    .safetensors/.bin of timm/efficientnet_b0.ra_in1k) loads offline; otherwise pretrained=True fetches the
    weights from the Hugging Face hub and, if that fails, warns once and starts from random weights."""
    import timm
    kw = dict(num_classes=num_classes, drop_path_rate=drop_path)
    if weights_file:
        if not os.path.isfile(weights_file):
            die(f"weights file {weights_file} not found; download it with "
                f"'hf download timm/efficientnet_b0.ra_in1k' or set WEIGHTS_FILE = None")
        try:
            return timm.create_model(MODEL_NAME, pretrained=True, **kw,
                                     pretrained_cfg_overlay=dict(file=os.path.abspath(weights_file))), True
        except Exception as e:
            die(f"could not load ImageNet weights from {weights_file} ({type(e).__name__}); it must be "
                f"the model.safetensors or pytorch_model.bin of timm/efficientnet_b0.ra_in1k")
    if pretrained:
        try:
            return timm.create_model(MODEL_NAME, pretrained=True, **kw), True
        except Exception as e:
            warn(f"could not fetch ImageNet weights for {MODEL_NAME} ({type(e).__name__}), training from "
                 "random weights, which needs far more data. Fix: point WEIGHTS_FILE (--weights-file) at a "
                 "local copy from 'hf download timm/efficientnet_b0.ra_in1k', or set PRETRAINED = False "
                 "(--no-pretrained) to silence this.")
    return timm.create_model(MODEL_NAME, pretrained=False, **kw), False


def make_criterion(label_smoothing=0.0, class_weights=None):
    import torch
    import torch.nn as nn
    weight = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)


def make_optimizer(net, optimizer="adam", lr=RECIPES["finetune"]["lr"], weight_decay=0.0):
    """timm's optimizer factory: no weight decay on biases and normalisation layers."""
    from timm.optim import create_optimizer_v2
    return create_optimizer_v2(net, opt=optimizer, lr=lr, weight_decay=weight_decay)


def data_config(net, image_size):
    """timm's preprocessing for the model (mean, std, interpolation, crop_pct) at image_size."""
    import timm
    cfg = timm.data.resolve_model_data_config(net)
    return dict(input_size=(3, image_size, image_size), mean=tuple(cfg["mean"]), std=tuple(cfg["std"]),
                interpolation=cfg["interpolation"], crop_pct=cfg["crop_pct"])


def eval_transform(cfg):
    """preprocess as a torch tensor: the one evaluation transform of every script."""
    import torch
    return lambda img: torch.from_numpy(preprocess(img, cfg))


def prepare_for_device(net, device):
    """Move to device in channels_last memory format (EfficientNet-B0 on 2 CPU cores: training 2.3x faster in
    bench.py, inference ~5x; also the fast layout for convolutions on GPUs)."""
    import torch
    return net.to(device, memory_format=torch.channels_last)


def malignant_probability(net, x, tta=False):
    """P(malignant) for a batch of normalised images; tta averages over TTA_FLIPS."""
    import torch
    x = x.contiguous(memory_format=torch.channels_last)
    views = [x.flip(dims) if dims else x for dims in (TTA_FLIPS if tta else [()])]
    return torch.stack([torch.softmax(net(v).float(), 1)[:, CLASSES.index("malignant")] for v in views]).mean(0)


# ---------------------------------------------------------------------------- training data (AItraining.py, bench.py)
def readable(batches, paths):
    """The uint8 crops of (indices, (crops, whys)) batches of Photos; stops at a photo that cannot be read."""
    for indices, (x, whys) in batches:
        for i, why in zip(indices, whys):
            if why:
                raise OSError(f"{paths[i]} is {why}; delete it or re-run prepare_dataset.py")
        yield x


class Split:
    """A split's uint8 crops on the training device: decoded once into a cache (when cached) or streamed by
    persistent DataLoader workers every pass. batches(order) gives the same tensors either way."""

    def __init__(self, photos, labels, cached, num_workers, device, desc):
        import torch
        from tqdm import tqdm
        self.paths, self.device, self.order = photos.paths, device, []
        self.labels = torch.as_tensor(labels, device=device)
        self.loader = photo_loader(photos, self.order, num_workers, device)
        self.cache = None
        if cached:
            self.order[:] = [list(range(i, min(i + 64, len(photos)))) for i in range(0, len(photos), 64)]
            self.cache = torch.cat([x.to(device) for x in tqdm(readable(zip(self.order, self.loader), self.paths),
                                                                 desc=desc, total=len(self.order), leave=False, disable=None)])
            self.loader = None  # decoded once: its workers need not wait for the rest of the run

    def batches(self, order):
        """(indices, uint8 crops, labels) for each list of indices in order."""
        import torch
        self.order[:] = order
        xs = (self.cache[torch.tensor(b, device=self.device)] for b in order) if self.cache is not None else \
            readable(zip(list(order), self.loader), self.paths)
        for b, x in zip(list(order), xs):
            yield b, x.to(self.device, non_blocking=True), self.labels[b]


def train_batches(split, batch_size, cfg, generator, generator_device, rank=0, world=1, order=None):
    """One epoch of augmented, normalised training batches (x, y) of a Split: a permutation of the photos from
    generator (or the given order), this process's share of it in full batches (all of it when it holds fewer
    than two batches' worth, as a tiny data set does), augmented on the device with generator_device."""
    import torch
    order = torch.randperm(len(split.paths), generator=generator) if order is None else torch.as_tensor(order)
    order, steps = order[rank::world].tolist(), len(order) // world // batch_size  # the same steps on every process
    batches = [order[i * batch_size:(i + 1) * batch_size] for i in range(steps)] if len(order) > batch_size else [order]
    for _, x, y in split.batches(batches):
        yield normalise(augment(x, generator_device, cfg["input_size"][-1]), cfg), y


def augment(x, generator, size):
    """Per-sample augmentation of a uint8 batch (B, 3, M, M) on its device: floats in [0, 1], (B, 3, size, size).
    Random resized crop (50-100% of the area, aspect 3/4 to 4/3, anywhere), any rotation and both flips as one
    affine_grid + grid_sample (bilinear, reflection at the borders), then brightness, contrast and saturation
    each times 0.8-1.2."""
    import torch
    import torch.nn.functional as F
    u = lambda low, high: torch.rand(len(x), generator=generator, device=x.device) * (high - low) + low
    area, aspect = u(0.5, 1.0), torch.exp(u(math.log(3 / 4), math.log(4 / 3)))
    sx, sy = (area * aspect).sqrt().clamp(max=1), (area / aspect).sqrt().clamp(max=1)  # half-sizes in [-1, 1] units
    tx, ty = (1 - sx) * u(-1, 1), (1 - sy) * u(-1, 1)  # the crop's centre, anywhere it fits
    sx, sy = sx * torch.where(u(0, 1) < 0.5, -1.0, 1.0), sy * torch.where(u(0, 1) < 0.5, -1.0, 1.0)  # flips
    angle = u(0, 2 * math.pi)
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack([torch.stack([cos * sx, -sin * sy, tx], 1), torch.stack([sin * sx, cos * sy, ty], 1)], 1)
    grid = F.affine_grid(theta, [len(x), 3, size, size], align_corners=False)
    x = F.grid_sample(x.float() / 255, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    factor = lambda: u(0.8, 1.2)[:, None, None, None]
    grey = lambda x: (x * torch.tensor([0.299, 0.587, 0.114], device=x.device)[:, None, None]).sum(1, keepdim=True)
    x = (x * factor()).clamp(0, 1)  # brightness
    mean = grey(x).mean((2, 3), keepdim=True)
    x = ((x - mean) * factor() + mean).clamp(0, 1)  # contrast
    return (grey(x) + (x - grey(x)) * factor()).clamp(0, 1)  # saturation


def lr_factor(step, total, warmup, schedule):
    """Share of the peak learning rate at a step: linear warm-up over warmup * total steps, then cosine to 0
    or constant."""
    warm = round(warmup * total)
    if step < warm:
        return (step + 1) / warm
    return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm))) if schedule == "cosine" else 1.0


# ---------------------------------------------------------------------------- metrics
def binary_metrics(y, p, threshold=0.5):
    """Malignant (1) is positive, predicted when p >= threshold. Works row-wise on the last axis, so one call
    scores thousands of bootstrap resamples; the same numbers as scikit-learn's (tests/test_model.py)."""
    y, p = np.asarray(y) == 1, np.asarray(p, dtype=float)
    pred = p >= threshold
    tp, fp = (pred & y).sum(-1), (pred & ~y).sum(-1)
    fn, tn = (~pred & y).sum(-1), (~pred & ~y).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        sens, spec, prec = tp / (tp + fn), tn / (tn + fp), np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        m = dict(accuracy=(tp + tn) / y.shape[-1], balanced_accuracy=(sens + spec) / 2, precision=prec,
                 sensitivity=np.nan_to_num(sens), specificity=spec,
                 f1=np.where(tp > 0, 2 * tp / (2 * tp + fp + fn), 0.0), roc_auc=roc_auc(y, p))
    if y.ndim > 1:
        return m
    return dict({k: float(v) for k, v in m.items()}, tn=int(tn), fp=int(fp), fn=int(fn), tp=int(tp),
                threshold=float(threshold))


def roc_auc(y, p):
    """ROC-AUC per row (Mann-Whitney U, tied scores share ranks); NaN where a row has one class only."""
    from scipy.stats import rankdata
    pos = np.asarray(y) == 1
    n1, n0 = pos.sum(-1), (~pos).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((rankdata(p, axis=-1) * pos).sum(-1) - n1 * (n1 + 1) / 2) / (n1 * n0)


def threshold_for_sensitivity(y_true, p_malignant, target):
    """The highest threshold whose sensitivity on (y_true, p) is at least target (0 = plain 0.5)."""
    from sklearn.metrics import roc_curve
    if not target or len(np.unique(y_true)) < 2:
        return 0.5
    fpr, tpr, thresholds = roc_curve(y_true, p_malignant, drop_intermediate=False)
    return float(min(1.0, np.max(thresholds[tpr >= target])))


def bootstrap_ci(y, p, n=2000, seed=0, level=0.95, threshold=0.5, metric_fn=None):
    """Percentile bootstrap over images: {metric: (low, high)} of binary_metrics (or of metric_fn(y, p), one
    number per row) over n resamples drawn with replacement; resamples with one class only are skipped."""
    y, p = np.asarray(y), np.asarray(p, dtype=float)
    idx = np.random.default_rng(seed).integers(0, len(y), size=(n, len(y)))
    idx = idx[y[idx].min(1) != y[idx].max(1)]
    values = {"value": metric_fn(y[idx], p[idx])} if metric_fn else binary_metrics(y[idx], p[idx], threshold)
    bounds = {k: np.nanpercentile(v, [50 * (1 - level), 50 * (1 + level)]) if len(idx) else [np.nan] * 2
              for k, v in values.items()}
    return {k: (float(low), float(high)) for k, (low, high) in bounds.items()}


def at_chance(auc_ci):
    """A model whose ROC-AUC 95% interval reaches down to 0.5 cannot be told from a coin."""
    return not auc_ci[0] > 0.5


# ---------------------------------------------------------------------------- model files
def meta_fault(meta):
    """What is wrong with a model file's metadata (what predict.py, evaluate.py and the web page need), or None."""
    need = ["classes", "image_size", "mean", "std", "interpolation", "crop_pct", "threshold"]
    missing = [key for key in need if key not in meta]
    number = lambda v, low, high: not isinstance(v, bool) and in_range(v, low, high)
    if missing:
        return f"no {', '.join(missing)} in its metadata"
    if meta["classes"] != CLASSES:
        return f"it is a model for classes {meta['classes']}; this project needs {CLASSES}"
    if not (isinstance(meta["image_size"], int) and number(meta["image_size"], 32, 2048)):
        return f"its image_size {meta['image_size']!r} is not a whole number from 32 to 2048"
    for key, low in (("mean", -10), ("std", 1e-6)):
        if not (isinstance(meta[key], list) and len(meta[key]) == 3 and all(number(v, low, 10) for v in meta[key])):
            return f"its {key} {meta[key]!r} is not three numbers" + (" above 0" if key == "std" else "")
    if meta["interpolation"] not in ("bicubic", "bilinear", "nearest"):
        return f"its interpolation {meta['interpolation']!r} is not bicubic, bilinear or nearest"
    if not number(meta["crop_pct"], 0.05, 1):
        return f"its crop_pct {meta['crop_pct']!r} is not a number in (0, 1]"
    if not number(meta["threshold"], 0, 1):
        return f"its threshold {meta['threshold']!r} is not a number from 0 to 1"
    if meta.get("at_chance") not in (None, True, False):  # None: not known (no validation split)
        return f"its at_chance {meta['at_chance']!r} is not true, false or null"
    return None


def meta_data_config(meta):
    """The data config stored in a model file's meta, in the shape data_config returns."""
    size = meta["image_size"]
    return dict(input_size=(3, size, size), mean=tuple(meta["mean"]), std=tuple(meta["std"]),
                interpolation=meta["interpolation"], crop_pct=meta["crop_pct"])


def checkpoint_state(net, cfg, threshold=0.5, **meta):
    """The one checkpoint format: weights plus everything needed to use them (meta_fault's keys, and
    val_metrics, val_auc_ci95, at_chance, epoch, settings, manifest_sha256 from AItraining.py)."""
    import PIL
    import timm
    import torch
    net = getattr(net, "module", net)  # unwrap DistributedDataParallel
    meta = dict(model_name=MODEL_NAME, classes=list(CLASSES), image_size=int(cfg["input_size"][-1]),
                mean=list(cfg["mean"]), std=list(cfg["std"]), interpolation=cfg["interpolation"],
                crop_pct=float(cfg["crop_pct"]), threshold=float(threshold), **meta,
                versions={"torch": str(torch.__version__), "timm": timm.__version__, "pillow": PIL.__version__})
    return {"state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()}, "meta": meta}


def save_checkpoint(path, state):
    import torch
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def check_model_file(path, how="train one with 'python AItraining.py'"):
    """die unless the model file is there as a regular file (a named pipe would block the reader)."""
    kind = file_kind(path)
    if kind:
        die(f"model file {path} {'not found' if kind == 'missing' else 'is ' + kind}; {how} or pass --model PATH")


def read_checkpoint(path):
    """The raw checkpoint dict, loaded safely (weights_only: a file that would run code is refused) and
    checked: metadata valid, weights finite. Dies with one line naming the file and the fault."""
    import torch
    check_model_file(path)
    try:
        with warnings.catch_warnings():  # a plain pickle of another protocol warns before it is refused
            warnings.simplefilter("ignore", UserWarning)
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        if is_onnx_file(path):
            die(f"{path} is an ONNX model (from export_onnx.py), not a PyTorch checkpoint; pass the .pth file "
                "AItraining.py wrote (predict.py takes either: --model file.onnx)")
        if "weights_only" in str(e) or "Unpickl" in type(e).__name__:
            die(f"refusing to load {path}: it contains Python objects that could run code "
                "(only plain weights and metadata are accepted)")
        die(f"{path} is not a readable checkpoint ({type(e).__name__}); it may be truncated, retrain or copy it again")
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict) or not isinstance(ckpt.get("meta"), dict):
        die(f"{path} is not a checkpoint written by AItraining.py (no state_dict/meta)")
    meta = ckpt["meta"]
    fault = meta_fault(meta) or (meta.get("model_name") != MODEL_NAME and f"it holds a {meta.get('model_name')} model, "
                                 f"this project needs {MODEL_NAME}")
    bad = [k for k, v in ckpt["state_dict"].items() if torch.is_tensor(v) and v.is_floating_point() and not v.isfinite().all()]
    if fault or bad:
        die(f"{path} is refused: {fault or f'{len(bad)} weight tensor(s) hold NaN or infinite values ({bad[0]})'}; "
            "retrain with AItraining.py (a broken model must not classify anything)")
    return ckpt


def is_onnx_file(path):
    try:
        import onnx
        return len(onnx.load(path, load_external_data=False).graph.node) > 0
    except Exception:
        return False


def load_weights(net, ckpt, path):
    """Put a checked checkpoint's weights into net; die (not raise) when they do not fit it."""
    try:
        net.load_state_dict(ckpt["state_dict"])
    except (RuntimeError, TypeError, AttributeError):
        die(f"{path}: the weights do not fit {MODEL_NAME} with {len(CLASSES)} classes "
            "(another architecture or class count); retrain with AItraining.py")
    return net


def load_checkpoint(path, device="cpu"):
    """(model in eval mode on device, meta dict) from a checkpoint written by AItraining.py, checked."""
    import timm
    ckpt = read_checkpoint(path)
    net = load_weights(timm.create_model(MODEL_NAME, pretrained=False, num_classes=len(CLASSES)), ckpt, path)
    return prepare_for_device(net, device).eval(), ckpt["meta"]


def load_onnx(path):
    """(onnxruntime session, meta) for a file written by export_onnx.py, checked as read_checkpoint checks a
    .pth (metadata, finite weights) plus its input and outputs; dies with one line on anything else."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper
    check_model_file(path, "export one with 'python export_onnx.py'")
    try:
        proto = onnx.load(path)
        session = ort.InferenceSession(proto.SerializeToString(), providers=[p for p in (
            "CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()])
    except Exception as e:
        die(f"{path} is not a readable ONNX model ({type(e).__name__}); export one with export_onnx.py")
    try:
        meta = {p.key: json.loads(p.value) for p in proto.metadata_props}
    except ValueError as e:
        die(f"{path} is refused: its metadata is not valid JSON ({e}); export the model again with export_onnx.py")
    fault = meta_fault(meta) or next((f"its weight {t.name} holds NaN or infinite values" for t in proto.graph.initializer
                                      if not np.isfinite(numpy_helper.to_array(t).astype(float, copy=False)).all()), None)
    if fault:
        die(f"{path} is refused: {fault}; export the model again with export_onnx.py")
    inputs, outputs = session.get_inputs(), {o.name: o.shape for o in session.get_outputs()}
    shape, size = (inputs[0].shape if len(inputs) == 1 else []), meta["image_size"]
    if len(inputs) != 1 or len(shape) != 4 or shape[1] != 3 or inputs[0].type != "tensor(float)":
        die(f"{path} takes {', '.join(f'{i.name} {i.shape} {i.type}' for i in inputs)}; predict.py needs one "
            "float32 input of shape [batch, 3, size, size] (export the model with export_onnx.py)")
    if shape[2:] != [size, size] or outputs.get("logits", [None])[-1:] != [len(CLASSES)]:
        die(f"{path} takes {shape} and gives {outputs}, its metadata says {size} px images and {len(CLASSES)} "
            "classes in 'logits'; export the model again with export_onnx.py")
    return session, meta
