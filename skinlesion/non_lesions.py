"""Images that are plainly not skin lesions, drawn by code (the same seed draws the same pixels): flat colours,
noise, gradients, stripes and checks, text, charts, textures (wood, marble, bricks, weave, sand, foliage) and
rendered scenes (landscapes, rooms, streets, still lifes, screens). The familiarity measure sees some kinds
while it is fitted (skinlesion/familiarity.py), and tools/measure_familiarity.py scores the kinds it did not see."""

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

SIZE = (320, 240)  # width, height of every image (4:3, as a photo)
WORDS = (  # what the text, charts and screens say
    "invoice total paid due date account the quick brown fox jumps over lazy dog chapter section report summary sale "
    "offer price order menu soup salad coffee tea monday tuesday meeting agenda notes def return import class lorem "
    "ipsum dolor sit amet consectetur adipiscing elit"
)


def colour(rng, low=0, high=256):
    return tuple(int(v) for v in rng.integers(low, high, 3))


def smooth(rng, cells, shape=SIZE[::-1]):
    """Gaussian noise on a cells x cells grid, smoothly (bicubic) enlarged to shape (h, w)."""
    small = Image.fromarray(rng.standard_normal((cells, cells)).astype(np.float32))
    return np.asarray(small.resize(shape[::-1], Image.BICUBIC))


def turbulence(rng, octaves=5):
    """Noise of several scales summed (1/f): the base of marble, clouds, sand."""
    return sum(smooth(rng, 2 ** (k + 2)) / 2**k for k in range(octaves))


def blend(a, b, t):
    """Per pixel a + (b - a) t for colours a, b and t (h, w) in 0-1: an RGB image."""
    t = np.clip(t, 0, 1)[..., None]
    return Image.fromarray((np.asarray(a) * (1 - t) + np.asarray(b) * t).clip(0, 255).astype(np.uint8))


def flat(rng):
    return Image.new("RGB", SIZE, colour(rng))


def noise(rng):
    w, h = SIZE
    style = rng.integers(3)
    if style == 0:
        return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    if style == 1:
        return Image.fromarray(np.clip(rng.normal(128, 50, (h, w, 1)), 0, 255).repeat(3, 2).astype(np.uint8))
    return blend(colour(rng), colour(rng), 0.5 + 0.3 * smooth(rng, int(rng.integers(3, 12))))


def gradient(rng):
    w, h = SIZE
    y, x = np.mgrid[0 : 1 : h * 1j, 0 : 1 : w * 1j]
    if rng.integers(2):
        a = rng.uniform(0, 2 * np.pi)
        t = x * np.cos(a) + y * np.sin(a)
    else:
        t = np.hypot(x - rng.uniform(), y - rng.uniform()) * 1.4
    return blend(colour(rng), colour(rng), (t - t.min()) / np.ptp(t))


def stripes(rng):
    w, h = SIZE
    y, x = np.mgrid[0:h, 0:w]
    period, a = rng.uniform(4, 40), rng.uniform(0, np.pi)
    u, v = x * np.cos(a) + y * np.sin(a), -x * np.sin(a) + y * np.cos(a)
    pattern = (u // period) % 2 if rng.integers(2) else ((u // period) + (v // period)) % 2
    return blend(colour(rng), colour(rng), pattern)


def text(rng):
    paper, ink = (colour(rng, 200), colour(rng, 0, 80)) if rng.integers(4) else (colour(rng, 0, 60), colour(rng, 190))
    img = Image.new("RGB", SIZE, paper)
    draw, size = ImageDraw.Draw(img), int(rng.integers(10, 40))
    font, y = ImageFont.load_default(size=size), int(rng.integers(0, 20))
    while y < SIZE[1]:
        line = " ".join(rng.choice(WORDS.split(), int(rng.integers(1, 8))))
        draw.text((int(rng.integers(2, 30)), y), line.title() if rng.integers(3) == 0 else line, fill=ink, font=font)
        y += int(size * rng.uniform(1.2, 2.0))
    return img


def chart(rng):
    """A chart on white: axes with ticks and a title, and lines, bars, dots, steps, a pie or a heat map."""
    w, h = SIZE
    img = Image.new("RGB", SIZE, (255, 255, 255))
    draw, ink, style = ImageDraw.Draw(img), colour(rng, 0, 200), int(rng.integers(6))
    draw.text((w // 3, 4), " ".join(rng.choice(WORDS.split(), 3)), fill=(0, 0, 0), font=ImageFont.load_default(14))
    left, top, right, bottom = 40, 28, w - 12, h - 28
    if style == 4:  # a pie
        start = 0.0
        for share in rng.dirichlet(np.ones(int(rng.integers(2, 7)))):
            draw.pieslice([w / 2 - 90, top, w / 2 + 90, top + 180], start, start + 360 * share, fill=colour(rng))
            start += 360 * share
        return img
    if style == 5:  # a heat map
        cells = rng.random((8, 12))
        for (i, j), v in np.ndenumerate(cells):
            x0, y0 = left + j * (right - left) / 12, top + i * (bottom - top) / 8
            draw.rectangle([x0, y0, x0 + (right - left) / 12, y0 + (bottom - top) / 8], fill=(int(255 * v), 60, 200))
        return img
    draw.line([(left, top), (left, bottom), (right, bottom)], fill=(0, 0, 0), width=1)
    for t in np.linspace(left, right, 6):
        draw.line([(t, bottom), (t, bottom + 4)], fill=(0, 0, 0))
        draw.text((t - 4, bottom + 6), str(int(t - left) // 10), fill=(0, 0, 0))
    n = int(rng.integers(5, 30))
    values = rng.random(n).cumsum()
    xs, ys = np.linspace(left + 5, right - 5, n), bottom - 5 - values / values.max() * (bottom - top - 10)
    if style == 0:
        draw.line(list(zip(xs, ys)), fill=ink, width=2)
    elif style == 1:
        for x, y in zip(xs, ys):
            draw.rectangle([x - (right - left) / n / 3, y, x + (right - left) / n / 3, bottom], fill=ink)
    elif style == 2:
        for x, y in zip(xs, ys + rng.normal(0, 8, n)):
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=ink)
    else:
        draw.line([p for x, y, x1 in zip(xs, ys, np.r_[xs[1:], right]) for p in ((x, y), (x1, y))], fill=ink, width=2)
    return img


def texture(rng):
    w, h = SIZE
    y, x = np.mgrid[0:h, 0:w] / h
    style, a, b = int(rng.integers(6)), colour(rng), colour(rng)
    if style == 0:  # wood: rings bent by noise
        t = 0.5 + 0.5 * np.sin(rng.uniform(20, 60) * (x + 0.15 * smooth(rng, 4)) + 3 * smooth(rng, 8) * 0.2)
        a, b = (150, 100, 55), (95, 60, 30)
    elif style == 1:  # marble: veins of turbulence
        t = np.abs(np.sin(rng.uniform(5, 15) * (x + y) + 2.5 * turbulence(rng))) ** 0.3
        a, b = (70, 70, 75), colour(rng, 200)
    elif style == 2:  # bricks
        row, period = (y * rng.uniform(6, 14)), rng.uniform(0.15, 0.3)
        shift = (np.floor(row) % 2) * period / 2
        mortar = (row % 1 < 0.12) | (((x + shift) % period) < 0.03)
        t = mortar * 1.0 + 0.1 * smooth(rng, 30)
        a, b = (150 + int(rng.integers(-30, 30)), 60, 45), (200, 200, 190)
    elif style == 3:  # weave
        period = rng.uniform(0.02, 0.06)
        t = 0.5 + 0.25 * np.sin(2 * np.pi * x / period) * np.sign(np.sin(np.pi * y / period)) + 0.1 * smooth(rng, 60)
    elif style == 4:  # sand, gravel
        t = 0.5 + 0.2 * turbulence(rng) + 0.15 * rng.standard_normal((h, w))
    else:  # foliage: many small leaves
        img = Image.new("RGB", SIZE, (30 + int(rng.integers(40)), 70 + int(rng.integers(60)), 30))
        draw = ImageDraw.Draw(img)
        for _ in range(400):
            cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(4, 14)
            draw.ellipse([cx - r, cy - r / 2, cx + r, cy + r / 2], fill=colour(rng, 20, 160)[:1] + (120, 40))
        return img.filter(ImageFilter.GaussianBlur(0.8))
    return blend(a, b, t)


def landscape(rng, img, draw):
    w, h = SIZE
    horizon = int(h * rng.uniform(0.4, 0.7))
    img.paste(blend((90, 140, 230), (200, 225, 250), np.mgrid[0 : 1 : horizon * 1j, 0 : 1 : w * 1j][0]), (0, 0))
    sun = rng.uniform(0, w), rng.uniform(10, horizon * 0.6)
    draw.ellipse([sun[0] - 18, sun[1] - 18, sun[0] + 18, sun[1] + 18], fill=(250, 230, 120))
    for k in range(int(rng.integers(1, 4))):  # mountain ranges, far to near
        xs = np.linspace(0, w, 9)
        ys = horizon - rng.uniform(10, 90, 9) / (k + 1)
        shade = 120 - 30 * k
        draw.polygon([(0, horizon), *zip(xs, ys), (w, horizon)], fill=(shade, shade + 10, shade + 30))
    draw.rectangle([0, horizon, w, h], fill=colour(rng, 40, 140)[:2] + (40,))
    for _ in range(int(rng.integers(0, 8))):  # trees
        x, y = rng.uniform(0, w), rng.uniform(horizon, h)
        draw.rectangle([x - 2, y - 20, x + 2, y], fill=(90, 60, 30))
        draw.ellipse([x - 12, y - 45, x + 12, y - 15], fill=(30, 110 + int(rng.integers(60)), 40))


def room(rng, img, draw):
    w, h = SIZE
    x0, y0, x1, y1 = w * 0.3, h * 0.25, w * 0.7, h * 0.65  # the back wall
    wall, floor = colour(rng, 120), colour(rng, 60, 180)
    draw.rectangle([0, 0, w, h], fill=tuple(int(v * 0.8) for v in wall))
    draw.polygon([(0, h), (x0, y1), (x1, y1), (w, h)], fill=floor)
    draw.rectangle([x0, y0, x1, y1], fill=wall)
    draw.rectangle([x0 + 15, y0 + 10, x0 + 60, y0 + 50], fill=(170, 210, 250), outline=(255, 255, 255), width=3)
    tx, ty = rng.uniform(w * 0.2, w * 0.6), rng.uniform(h * 0.7, h * 0.8)  # a table
    draw.rectangle([tx, ty, tx + 90, ty + 8], fill=(120, 80, 40))
    draw.rectangle([tx + 5, ty + 8, tx + 10, ty + 50], fill=(100, 70, 35))
    draw.rectangle([tx + 80, ty + 8, tx + 85, ty + 50], fill=(100, 70, 35))


def street(rng, img, draw):
    w, h = SIZE
    draw.rectangle([0, 0, w, h], fill=(150, 180, 220))
    x = 0
    while x < w:
        bw, bh = rng.uniform(30, 80), rng.uniform(60, 200)
        draw.rectangle([x, h - 40 - bh, x + bw, h - 40], fill=colour(rng, 60, 200))
        for wx in np.arange(x + 5, x + bw - 8, 12):
            for wy in np.arange(h - 35 - bh, h - 50, 16):
                draw.rectangle([wx, wy, wx + 6, wy + 8], fill=(240, 230, 150) if rng.integers(3) else (40, 40, 60))
        x += bw + rng.uniform(0, 10)
    draw.rectangle([0, h - 40, w, h], fill=(70, 70, 75))
    draw.line([(0, h - 20), (w, h - 20)], fill=(240, 240, 240), width=3)


def still_life(rng, img, draw):
    """Shaded spheres and boxes on a table (a Lambertian light)."""
    w, h = SIZE
    img.paste(blend(colour(rng, 100), colour(rng, 40, 120), np.mgrid[0 : 1 : h * 1j, 0 : 1 : w * 1j][0] > 0.6), (0, 0))
    y, x = np.mgrid[0:h, 0:w]
    pixels = np.asarray(img).astype(float)
    for _ in range(int(rng.integers(1, 4))):
        cx, cy, r, c = rng.uniform(50, w - 50), rng.uniform(h * 0.4, h * 0.7), rng.uniform(20, 50), colour(rng)
        dx, dy = (x - cx) / r, (y - cy) / r
        inside = dx**2 + dy**2 < 1
        light = np.clip(-0.5 * dx - 0.6 * dy + 0.6 * np.sqrt(np.clip(1 - dx**2 - dy**2, 0, 1)), 0.15, 1)
        pixels[inside] = np.array(c) * light[inside, None]
    img.paste(Image.fromarray(pixels.clip(0, 255).astype(np.uint8)))


def screen(rng, img, draw):
    """A window of an application: a title bar, buttons, boxes, lines of text."""
    w, h = SIZE
    draw.rectangle([0, 0, w, h], fill=colour(rng, 200))
    draw.rectangle([0, 0, w, 22], fill=colour(rng, 30, 120))
    font = ImageFont.load_default(size=12)
    for y in range(34, h - 20, 26):
        draw.rectangle([10, y, 70, y + 18], fill=colour(rng, 60, 200), outline=(60, 60, 60))
        draw.text((80, y + 2), " ".join(rng.choice(WORDS.split(), 4)), fill=(20, 20, 20), font=font)


SCENES = (landscape, room, street, still_life, screen)


def scene(rng):
    img = Image.new("RGB", SIZE)
    SCENES[int(rng.integers(len(SCENES)))](rng, img, ImageDraw.Draw(img))
    return img.filter(ImageFilter.GaussianBlur(rng.uniform(0, 1.2)))


KINDS = dict(flat_colour=flat, noise=noise, gradient=gradient, stripes=stripes, text=text, chart=chart,
             texture=texture, scene=scene)  # fmt: skip


def images(n_per_kind, seed=0, kinds=None):
    """[(kind, PIL image)]: n_per_kind images of each kind (all KINDS, or those named), the same for one seed."""
    found = []
    for kind in kinds or KINDS:
        rng = np.random.default_rng([seed, list(KINDS).index(kind)])  # a kind draws the same within any subset
        found += [(kind, KINDS[kind](rng)) for _ in range(n_per_kind)]
    return found
