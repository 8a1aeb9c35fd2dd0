"""Photos: finding them, reading them upright as RGB, and what the model sees of one (the centre crop,
normalised). The Python twin of web/preprocess.js: functions of the same name (geometry, centre_crop,
normalise, preprocess, flatten_on_white, image_size, upsample_bilinear, too_elongated; load_image is loadImage
there) give the same pixels. Plus the DataLoader that AItraining.py, evaluate.py and bench.py read photos with."""

import contextlib
import io
import os
import warnings

import numpy as np
from PIL import Image, ImageOps

from skinlesion import reading
from skinlesion.files import file_kind
from skinlesion.messages import UserError, printable

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")  # what counts as an image
MAX_IMAGE_PIXELS = 200_000_000  # larger images are refused as possible decompression bombs
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
warnings.simplefilter("error", Image.DecompressionBombWarning)  # over the limit: an error, on purpose
MAX_PHOTO_BYTES = 2_000_000_000  # larger files are not read as photos (ISIC's largest are tens of MB)
MAX_ASPECT = 10  # an image with one side more than 10 times the other is refused (not a photo of a lesion)
UNREADABLE = "not a readable image"  # how try_load_image's why starts for a file that is not a photo at all
RESAMPLING = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}


def is_image_file(path):
    return os.path.splitext(str(path))[1].lower() in IMAGE_EXTS


def why_skipped(file, named_directly):
    """Why a file found under a folder (or named directly) is not read as a photo, or None."""
    kind = file_kind(file)
    if kind:
        return kind
    if named_directly:
        return None
    if file.endswith("_gradcam.png"):
        return "a Grad-CAM picture written by predict.py --explain"
    if not is_image_file(file):
        return f"not an image file ({', '.join(IMAGE_EXTS)})"
    return None


def walk_once(folder):
    """(the files under folder, sorted, each real file once; [(link, why)] for the links not followed): links are
    followed only while they stay inside folder (after links), and each real folder is entered once, so a link
    to '/' or a loop of links neither leaves folder, hangs, nor repeats photos."""
    from skinlesion.folders import is_within

    seen_folders, seen_files, found, refused = set(), set(), [], []
    outside = f"a link out of {printable(folder)} (pass what it points to directly)"
    for root, dirnames, names in os.walk(folder, followlinks=True):
        info = os.stat(root)
        if (info.st_dev, info.st_ino) in seen_folders:
            dirnames[:] = []
            continue
        seen_folders.add((info.st_dev, info.st_ino))
        for name in sorted(dirnames):
            if not is_within(os.path.join(root, name), folder):
                dirnames.remove(name)
                refused.append((os.path.join(root, name), outside))
        dirnames.sort()
        for name in sorted(names):
            path = os.path.join(root, name)
            try:
                info = os.stat(path)
                key = (info.st_dev, info.st_ino)
            except OSError:  # a dangling link: reported as missing
                key = path
            if os.path.islink(path) and not is_within(path, folder):
                refused.append((path, outside))
            elif key not in seen_files:
                seen_files.add(key)
                found.append(path)
    return sorted(found), sorted(refused)


def find_images(paths):
    """(image files, [(file, why skipped)]) under paths (files and folders, searched recursively, sorted);
    a file named directly is tried whatever its extension. Dies on a path that does not exist."""
    images, skipped = [], []
    for path in paths:
        kind = file_kind(path)
        if kind == "missing":
            raise UserError(f"{printable(path)} not found; pass an image file or a folder of images")
        if kind not in (None, "a folder"):
            raise UserError(f"{printable(path)} is {kind}; pass an image file or a folder of images")
        found, refused = ([path], []) if kind is None else walk_once(path)
        skipped += refused
        for file in found:
            why = why_skipped(file, named_directly=kind is None)
            if why:
                skipped.append((file, why))
            else:
                images.append(file)
    return images, skipped


def flatten_on_white(img):
    """An image with transparency pasted onto a white background, as RGB."""
    background = Image.new("RGB", img.size, (255, 255, 255))
    rgba = img.convert("RGBA")
    background.paste(rgba, mask=rgba.getchannel("A"))
    return background


class NotAPhoto(OSError):
    """An image that is readable but cannot be a photo of a lesion (its message says why, in words)."""


def too_elongated(width, height):
    """Whether one side of an image is more than MAX_ASPECT times the other: its centre crop would show under a
    tenth of it, and resizing its shorter side to the model's size costs without bound (a 375-byte 100000 x 1
    PNG took 2.6 GB and 14 s)."""
    return max(width, height) > MAX_ASPECT * min(width, height)


def load_image(path, min_side=None):
    """Open an image as upright RGB. With min_side, let Pillow's JPEG draft mode decode at a reduced scale
    that still leaves the shorter side >= min_side (much faster on multi-megapixel photos). Raises OSError
    (unreadable, truncated, not an image, not a regular file), NotAPhoto (too_elongated, known from the header,
    before decoding) or DecompressionBombError/Warning. path may be an open file (a photo's bytes read from a
    shard)."""
    with photo_file(path) as f, Image.open(f) as img:
        if too_elongated(*img.size):
            w, h = img.size
            raise NotAPhoto(f"{w} x {h} pixels, one side over {MAX_ASPECT} times the other: crop it to the lesion")
        if min_side and img.format == "JPEG":
            w, h = img.size
            scale = max(min_side / min(w, h), 1 / 8)
            img.draft("RGB", (max(1, round(w * scale)), max(1, round(h * scale))))
        img = ImageOps.exif_transpose(img)
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit grey PNG: the high byte, as browsers decode it
            img = Image.fromarray((np.asarray(img, dtype=np.int64) >> 8).clip(0, 255).astype(np.uint8))
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            return flatten_on_white(img)
        return img.convert("RGB")


def opened(path, blobs=None):
    """What load_image reads for a photo: its bytes as a file where blobs (read from shards) hold them, else
    the path."""
    if blobs is None:
        return path
    return io.BytesIO(blobs[path])


def try_load_image(path):
    """(upright RGB image, None), or (None, why it could not be read): each caller keeps its own policy. A photo
    too elongated says how to fix it (crop it); a why that starts with UNREADABLE needs another file."""
    try:
        return load_image(path), None
    except NotAPhoto as e:
        return None, str(e)
    except Exception as e:  # OSError, DecompressionBombError, ...: not a readable image, whatever the cause
        first = str(e).splitlines()[0] if str(e) else ""
        detail = f": {first}" if first else ""
        return None, f"{UNREADABLE} ({type(e).__name__}{detail})"


def image_size(path):
    """(width, height) as stored, from the header only."""
    with photo_file(path) as f, Image.open(f) as img:
        return img.size


def photo_file(path):
    """A photo's file to read, opened only when it is a regular file of at most MAX_PHOTO_BYTES (a named pipe is
    never waited on: reading.Unreadable, an OSError, says what it is); path may be an open file already."""
    if hasattr(path, "read"):
        return contextlib.nullcontext(path)
    return reading.open_regular(path, MAX_PHOTO_BYTES)


def short_side(size, crop_pct):
    """What the shorter side of a photo is resized to before the centre crop: floor(size / crop_pct), 256 for
    224 at 0.875 (timm's eval transform; the page's shortSide)."""
    return int(size / crop_pct)


def geometry(width, height, size, crop_pct):
    """(resized width, resized height, left, top): the shorter side resized to floor(size / crop_pct), the
    longer in proportion (rounded down), and the offsets of the centre size x size crop (rounded half to even,
    as Python's round and torchvision do)."""
    short = short_side(size, crop_pct)
    if width <= height:
        new_w, new_h = short, int(short * height / width)
    else:
        new_w, new_h = int(short * width / height), short
    return new_w, new_h, round((new_w - size) / 2.0), round((new_h - size) / 2.0)


def centre_crop(img, size, crop_pct, interpolation):
    """What the model sees of a photo: resized with Pillow's interpolation as geometry says, then the centre
    size x size (timm's evaluation transform, in Pillow alone: the recipe a consumer outside Python follows)."""
    new_w, new_h, left, top = geometry(img.width, img.height, size, crop_pct)
    img = img.resize((new_w, new_h), RESAMPLING[interpolation])
    return img.crop((left, top, left + size, top + size))


def eval_crop(img, cfg):
    """centre_crop with a model's data config (cfg: input_size, crop_pct, interpolation)."""
    return centre_crop(img, cfg["input_size"][-1], cfg["crop_pct"], cfg["interpolation"])


def normalise(crop, mean, std):
    """A uint8 crop (H, W, 3) scaled to [0, 1], less mean, over std: float32 (3, H, W)."""
    x = np.asarray(crop, dtype=np.float32) / 255.0
    x = (x - np.array(mean, dtype=np.float32)) / np.array(std, dtype=np.float32)
    return x.transpose(2, 0, 1).copy()


def preprocess(img, cfg):
    """The network's input for one photo: float32 (3, size, size), for onnxruntime and PyTorch alike."""
    return normalise(eval_crop(img, cfg), cfg["mean"], cfg["std"])


def upsample_bilinear(values, size):
    """An (h, w) map enlarged to size x size, bilinear with half-pixel centres and clamped edges (as
    torch.nn.functional.interpolate(mode="bilinear", align_corners=False))."""
    values = np.asarray(values, dtype=np.float64)
    rows = [sample_positions(values.shape[0], size), sample_positions(values.shape[1], size)]
    (y0, y1, fy), (x0, x1, fx) = rows
    top = values[y0][:, x0] * (1 - fx) + values[y0][:, x1] * fx
    bottom = values[y1][:, x0] * (1 - fx) + values[y1][:, x1] * fx
    return (top * (1 - fy)[:, None] + bottom * fy[:, None]).astype(np.float32)


def sample_positions(n, size):
    """For each of size output positions: the two input indices and the weight of the second."""
    s = np.clip((np.arange(size) + 0.5) * n / size - 0.5, 0, n - 1)
    first = np.floor(s).astype(int)
    return first, np.minimum(first + 1, n - 1), s - first


def normalise_batch(x, cfg):
    """A uint8 (or [0, 1] float) torch batch to the network's input on its device, as preprocess does,
    channels_last."""
    import torch

    if x.dtype == torch.uint8:
        x = x.float() / 255
    mean = torch.tensor(cfg["mean"], device=x.device, dtype=torch.float32)[:, None, None]
    std = torch.tensor(cfg["std"], device=x.device, dtype=torch.float32)[:, None, None]
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


class Photos:
    """uint8 (3, size, size) centre crops of photos (as centre_crop makes them), each with why it could not be
    read ('' if it could; the crop is then zeros), for DataLoader workers: what AItraining.py caches or streams,
    and what evaluate.py scores. Each caller keeps its own policy for unreadable photos. blobs: {path: the
    photo's bytes} where the photos were read from shards (skinlesion/shards.py), None for files."""

    def __init__(self, paths, size, crop_pct, interpolation, blobs=None):
        self.paths, self.size, self.crop_pct, self.interpolation = paths, size, crop_pct, interpolation
        self.blobs = blobs

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        img, why = try_load_image(opened(self.paths[i], self.blobs))
        if img is None:
            return np.zeros((3, self.size, self.size), np.uint8), why
        crop = centre_crop(img, self.size, self.crop_pct, self.interpolation)
        return np.asarray(crop).transpose(2, 0, 1).copy(), ""


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

    return DataLoader(
        photos,
        batch_sampler=batches,
        num_workers=num_workers,
        worker_init_fn=one_thread,
        persistent_workers=num_workers > 0,
        pin_memory=device.type == "cuda",
        generator=torch.Generator(),
    )


def size_caution(path, img):
    """A warning for a photo far too small or too elongated to show a lesion (predict.py says it), else None."""
    w, h = img.size
    if min(w, h) < 16 or max(w, h) > 8 * min(w, h):
        return f"{printable(path)} is {w} x {h} px: far too small or too elongated to show a lesion; do not trust it"
    return None
