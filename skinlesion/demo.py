"""The synthetic lesions of make_demo_data.py: a drawing per lesion type, and the clinical overview photo of
one (skin, lighting, hairs). Drawings, not real lesions; the same seeds draw the same bytes."""

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SKIN = np.array(
    [[238, 204, 180], [230, 190, 160], [218, 172, 140], [196, 150, 114], [156, 110, 80], [112, 78, 58]]
)  # I-VI
PALETTE = np.array([[92, 55, 34], [36, 28, 28], [104, 112, 134], [172, 84, 78], [150, 102, 66]])  # of a melanoma
PALETTE_BIAS = np.array([0.2, 0.5, 0.3, 0.0, -0.4])[:, None, None]  # dark brown, black, blue-grey, red, tan
DIAMETERS = dict(  # type: range of the lesion's diameter / the photo's height
    nevus=(0.2, 0.38),
    seborrheic_keratosis=(0.45, 0.7),
    dermatofibroma=(0.2, 0.35),
    melanoma=(0.55, 0.85),
    basal_cell_carcinoma=(0.5, 0.72),
    actinic_keratosis=(0.3, 0.6),
    atypical_melanocytic=(0.4, 0.7),
)


def smooth_noise(rng, shape, cells):
    """Gaussian noise on a cells x cells grid, smoothly (bicubic) enlarged to shape (h, w)."""
    small = Image.fromarray(rng.standard_normal((cells, cells)).astype(np.float32))
    return np.asarray(small.resize(shape[::-1], Image.BICUBIC))


def lesion_mask(rng, px, amp):
    """(alpha, r) on a px x px patch: a lesion whose border lies at 0.6 of the half width times 1 + the sum of
    amp[k-1] cos(k angle + a random phase); alpha 1 inside, 0 outside; r the distance from the centre relative
    to that 0.6."""
    y, x = np.mgrid[-1 : 1 : px * 1j, -1 : 1 : px * 1j]
    k, angles = np.arange(1, len(amp) + 1)[:, None], np.linspace(-np.pi, np.pi, 721)
    border = 0.6 * (1 + (np.asarray(amp)[:, None] * np.cos(k * angles + rng.uniform(0, 2 * np.pi, k.shape))).sum(0))
    alpha = np.clip((np.interp(np.arctan2(y, x), angles, border) - np.hypot(x, y)) * px / 4, 0, 1)
    return alpha, np.hypot(x, y) / 0.6


def rgba(colour, alpha):
    """An RGBA patch from (px, px, 3) colours and (px, px) alpha in 0-1."""
    return Image.fromarray(np.dstack([colour, alpha * 255]).clip(0, 255).astype(np.uint8), "RGBA")


def inside(rng, px, radius):
    """A random point (x, y) in px of the patch, within radius (relative to the lesion's 0.6) of its centre."""
    a, r = rng.uniform(0, 2 * np.pi), 0.6 * radius * np.sqrt(rng.uniform())
    return (1 + r * np.cos(a)) * px / 2, (1 + r * np.sin(a)) * px / 2


def draw_nevus(rng, px):
    """Round, symmetric, one brown."""
    alpha, _ = lesion_mask(rng, px, [0, rng.uniform(0, 0.08)])
    brown = np.array([176, 126, 88]) + rng.uniform(0, 1) * np.array([-50, -42, -32])
    colour = brown * (1 + 0.03 * smooth_noise(rng, (px, px), 4))[..., None]
    return rgba(colour, alpha).filter(ImageFilter.GaussianBlur(px / 80))


def draw_melanoma(rng, px):
    """Irregular, asymmetric border, patches of dark brown, black, blue-grey and red."""
    alpha, _ = lesion_mask(rng, px, rng.uniform(0.04, 0.12, 12) / np.sqrt(np.arange(1, 13)))
    colour = PALETTE[np.argmax([smooth_noise(rng, (px, px), 5) for _ in PALETTE] + PALETTE_BIAS, axis=0)]
    return rgba(colour, alpha).filter(ImageFilter.GaussianBlur(px / 50))


def draw_keratosis(rng, px, light=(192, 172, 140), dark=(128, 116, 104)):
    """Seborrheic keratosis: light tan to grey-brown, waxy and rough (a coarse mottle, pale milia-like dots and
    dark crypts), a lobulated but sharp 'stuck-on' border with a slightly darker rim. Other colours: an actinic
    keratosis (red, scaly)."""
    k = np.arange(1, 13)
    alpha, r = lesion_mask(rng, px, rng.uniform(0.01, 0.04, 12) / np.sqrt(k) * (k >= 2))
    base = np.array(light) + rng.uniform(0, 1) * (np.array(dark) - light)
    rough = 1 + 0.08 * smooth_noise(rng, (px, px), max(4, px // 8)) + 0.04 * rng.standard_normal((px, px))
    img = rgba(base * (rough * (1 - 0.12 * (r > 0.85)))[..., None], alpha)
    draw = ImageDraw.Draw(img)
    for fill, n, size in [((228, 216, 186, 255), rng.integers(10, 24), 0.016), ((120, 96, 76, 255), 16, 0.014)]:
        for _ in range(n):  # milia-like dots, then crypts
            (x, y), d = inside(rng, px, 0.8), px * size * rng.uniform(0.6, 1.4)
            draw.ellipse([x - d, y - d, x + d, y + d], fill=fill)
    return img.filter(ImageFilter.GaussianBlur(px / 250))


def draw_basal_cell_carcinoma(rng, px):
    """A pink, pearly, translucent nodule (a paler rolled rim), fine red branching vessels, a few blue-grey
    ovoid nests, and a small dark ulcer near the centre."""
    alpha, r = lesion_mask(rng, px, [0, rng.uniform(0, 0.1), rng.uniform(0, 0.05)])
    pink = np.array([218, 120, 160]) + rng.uniform(-1, 1) * np.array([10, 12, 12])
    colour = pink + (np.clip((r - 0.55) / 0.45, 0, 1) ** 2)[..., None] * (np.array([246, 220, 228]) - pink)
    img = rgba(colour * (1 + 0.02 * smooth_noise(rng, (px, px), 4))[..., None], 0.93 * alpha)
    draw = ImageDraw.Draw(img)
    for _ in range(rng.integers(3, 7)):  # a vessel from near the rim inwards, meandering, with a branch
        a = rng.uniform(0, 2 * np.pi)
        points, heading = [np.array([np.cos(a), np.sin(a)]) * 0.3 * px * rng.uniform(0.6, 0.95) + px / 2], a + np.pi
        for _ in range(6):
            heading += rng.normal(0, 0.6)
            points.append(points[-1] + px * 0.035 * np.array([np.cos(heading), np.sin(heading)]))
        branch = [points[3], points[3] + px * 0.07 * np.array([np.cos(heading + 1), np.sin(heading + 1)])]
        for line in (points, branch):
            draw.line([tuple(p) for p in line], fill=(176, 36, 50, 255), width=max(1, px // 90))
    for _ in range(rng.integers(3, 7)):
        (x, y), d = inside(rng, px, 0.7), px * rng.uniform(0.035, 0.07)
        draw.ellipse([x - d, y - 0.7 * d, x + d, y + 0.7 * d], fill=(72, 80, 110, 255))
    (x, y), d = inside(rng, px, 0.2), px * rng.uniform(0.05, 0.1)
    draw.ellipse([x - d, y - 0.8 * d, x + d, y + 0.8 * d], fill=(60, 26, 30, 255))
    img.putalpha(Image.fromarray((0.93 * alpha * 255).astype(np.uint8)))  # nothing drawn outside the nodule
    return img.filter(ImageFilter.GaussianBlur(px / 120))


def draw_dermatofibroma(rng, px):
    """A small firm papule: a light brown ring around a whitish pink, scar-like centre."""
    alpha, r = lesion_mask(rng, px, [0, rng.uniform(0, 0.06)])
    ring, centre = np.array([168, 118, 92]), np.array([228, 200, 190])
    colour = ring + np.clip(1 - r / 0.55, 0, 1)[..., None] * (centre - ring)
    return rgba(colour, alpha).filter(ImageFilter.GaussianBlur(px / 60))


def draw_actinic_keratosis(rng, px):
    return draw_keratosis(rng, px, light=(214, 132, 118), dark=(188, 108, 98))


DRAW = dict(  # type: its drawing, a function (rng, px) -> RGBA patch
    nevus=draw_nevus,
    seborrheic_keratosis=draw_keratosis,
    dermatofibroma=draw_dermatofibroma,
    melanoma=draw_melanoma,
    basal_cell_carcinoma=draw_basal_cell_carcinoma,
    actinic_keratosis=draw_actinic_keratosis,
    atypical_melanocytic=draw_melanoma,
)


def dermoscopic(img, rng):
    """A drawn photo as a dermatoscope sees it: magnified about twice, its contrast raised and its colours cooled,
    through the round field of the lens (black beyond it)."""
    w, h = img.size
    zoom = rng.uniform(1.7, 2.3)
    box = (w - w / zoom) / 2, (h - h / zoom) / 2, (w + w / zoom) / 2, (h + h / zoom) / 2
    pixels = np.asarray(img.resize((w, h), Image.BICUBIC, box=box), dtype=np.float64)
    mean = pixels.mean((0, 1))
    pixels = (pixels - mean) * rng.uniform(1.3, 1.6) + mean * np.array([0.92, 0.88, 1.08])
    y, x = np.mgrid[0:h, 0:w]
    field = np.clip((1 - np.hypot(x - w / 2, y - h / 2) / (0.5 * h * rng.uniform(1.0, 1.15))) * 25, 0, 1)[..., None]
    return Image.fromarray((pixels * field + 10 * (1 - field)).clip(0, 255).astype(np.uint8))


def photo(job):
    """Worker: a clinical overview photo (4:3, longer side size px) of one lesion of a type in one view (rotation,
    position, lighting, hairs) on skin of a Fitzpatrick type (0-5; lesions darken with the skin), drawn at up to
    400 x 300 and enlarged; for the image type "dermoscopic", as a dermatoscope sees it. The same seeds give the
    same bytes."""
    path, lesion_seed, view_seed, kind, skin, size, image_type = job
    rng, lesion_rng = np.random.default_rng(view_seed), np.random.default_rng(lesion_seed)
    w = min(size, 400)
    h = w * 3 // 4
    diameter = h * lesion_rng.uniform(*DIAMETERS[kind])
    patch = DRAW[kind](lesion_rng, int(diameter / 0.6 * rng.uniform(0.9, 1.1)))
    patch = patch.rotate(rng.uniform(0, 360), Image.BILINEAR)
    light_skin = SKIN[min(skin, 2)]
    canvas = Image.new("RGB", (w, h), tuple(int(v) for v in (light_skin * rng.uniform(0.95, 1.05, 3)).clip(0, 255)))
    canvas.paste(patch, tuple((np.array([w, h]) * rng.uniform(0.42, 0.58, 2) - patch.width / 2).astype(int)), patch)
    y, x = np.mgrid[-0.5 : 0.5 : h * 1j, -0.5 : 0.5 : w * 1j]
    a = rng.uniform(0, 2 * np.pi)
    light = 1 + rng.uniform(0.1, 0.3) * (x * np.cos(a) + y * np.sin(a)) + 0.03 * smooth_noise(rng, (h, w), 10)
    light += 0.02 * rng.standard_normal((h, w))  # lighting gradient, blotches, grain; then a colour cast and the skin:
    pixels = np.asarray(canvas) * light[..., None] * rng.uniform(0.96, 1.04, 3) * (SKIN[skin] / light_skin)
    img = Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).resize((size, size * 3 // 4), Image.BILINEAR)
    draw = ImageDraw.Draw(img)
    for _ in range(rng.integers(0, 5)):  # hairs: gently curved dark lines
        t, (x0, y0), a = np.linspace(0, 1, 8), rng.uniform(0, size, 2), rng.uniform(0, np.pi)
        along, across = t * size * rng.uniform(0.1, 0.4), rng.uniform(-0.02, 0.02) * size * np.sin(np.pi * t)
        xs, ys = x0 + along * np.cos(a) - across * np.sin(a), y0 + along * np.sin(a) + across * np.cos(a)
        draw.line(list(zip(xs, ys)), fill=(45, 35, 30), width=max(1, size // 600), joint="curve")
    if image_type == "dermoscopic":
        img = dermoscopic(img, rng)
    img.save(path, quality=90)
