// What skinlesion/photos.py does to a photo before the network sees it (load_image, then preprocess), pixel for
// pixel, each step a function of the same name (camelCase here, snake_case there; tests/test_web.py checks it):
// decode upright, flatten transparency onto white, resize the shorter side to floor(S / crop_pct) with
// Pillow's BICUBIC, centre crop with Python's round, normalise. The browser's own canvas resize is neither
// Pillow's bicubic nor its bilinear (it moved P(malignant) by up to 0.31), so resizeBicubic below is a port of
// Pillow's separable resampling (src/libImaging/Resample.c, 8 bits per channel): bit-identical to
// img.resize((w, h), Image.BICUBIC) on the same RGB pixels (tests/test_web.py checks it).

const PRECISION_BITS = 22; // Pillow's fixed point: 32 - 8 - 2 bits

// Pillow's bicubic kernel (a = -0.5), with its support of 2; same operations in the same order.
function bicubic(x) {
  if (x < 0) x = -x;
  if (x < 1) return ((-0.5 + 2) * x - (-0.5 + 3)) * x * x + 1;
  if (x < 2) return (((x - 5) * x + 8) * x - 4) * -0.5;
  return 0;
}

// For each output position: the first input index, the number of taps and their fixed-point weights.
function coefficients(inSize, outSize) {
  const scale = inSize / outSize;
  const filterscale = Math.max(scale, 1); // downscaling widens the kernel: antialiasing
  const support = 2 * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const ss = 1 / filterscale;
  const first = new Int32Array(outSize), count = new Int32Array(outSize);
  const weights = new Int32Array(outSize * ksize), w = new Float64Array(ksize);
  for (let i = 0; i < outSize; i++) {
    const center = (i + 0.5) * scale;
    const xmin = Math.max(Math.trunc(center - support + 0.5), 0);
    const n = Math.min(Math.trunc(center + support + 0.5), inSize) - xmin;
    let ww = 0;
    for (let x = 0; x < n; x++) ww += (w[x] = bicubic((x + xmin - center + 0.5) * ss));
    for (let x = 0; x < n; x++) {
      const k = (ww !== 0 ? w[x] / ww : w[x]) * (1 << PRECISION_BITS);
      weights[i * ksize + x] = Math.trunc(k < 0 ? k - 0.5 : k + 0.5);
    }
    first[i] = xmin;
    count[i] = n;
  }
  return { first, count, weights, ksize };
}

// Rounding, clipping fixed-point sum to 0..255, as Pillow's clip8.
function clip8(sum) {
  if (sum <= 0) return 0;
  const v = Math.floor(sum / (1 << PRECISION_BITS));
  return v > 255 ? 255 : v;
}

// One pass along one axis, over `lines` lines (rows, or columns) from lineStart on. Along a line, input pixel x
// starts at line * lineStride + x * step and output pixel j (of outIdx[j]) at line * dstLine + j * dstStep;
// the 3 channels are consecutive bytes in both.
function pass(src, lineStride, step, lines, lineStart, c, outIdx, dst, dstStep, dstLine) {
  const { first, count, weights, ksize } = c;
  for (let l = 0; l < lines; l++) {
    const base = (l + lineStart) * lineStride;
    for (let j = 0; j < outIdx.length; j++) {
      const i = outIdx[j], xmin = first[i], n = count[i], k0 = i * ksize;
      let r = 1 << (PRECISION_BITS - 1), g = r, b = r;
      for (let x = 0; x < n; x++) {
        const p = base + (x + xmin) * step, k = weights[k0 + x];
        r += src[p] * k;
        g += src[p + 1] * k;
        b += src[p + 2] * k;
      }
      const q = l * dstLine + j * dstStep;
      dst[q] = clip8(r);
      dst[q + 1] = clip8(g);
      dst[q + 2] = clip8(b);
    }
  }
}

function range(start, n) {
  return Int32Array.from({ length: n }, (_, i) => start + i);
}

// Pixels [x0, x0 + w) x [y0, y0 + h) of Pillow's img.resize((outW, outH), Image.BICUBIC), as RGB bytes
// (w * h * 3). src: width x height pixels of `channels` bytes (3 or 4; the 4th is ignored), rows packed.
// Two passes, each rounded to 8 bits, over just the source lines the second pass reads. The order matters
// to the last bit: Pillow 13 (python-pillow/Pillow#9549) runs the vertical pass first when the height
// shrinks by more than twice as many pixels as the width (photos taller than about 2:1); Pillow 10 to 12
// always ran the horizontal pass first. This follows Pillow 13.
export function resizeBicubic(src, width, height, channels, outW, outH, x0 = 0, y0 = 0, w = outW, h = outH) {
  const horiz = coefficients(width, outW), vert = coefficients(height, outH);
  const out = new Uint8Array(w * h * 3);
  const shift = (c, by) => ({ ...c, first: c.first.map((v) => v - by) });
  if (height > outH && height - outH > 2 * (width - outW)) {
    const first = horiz.first[x0], cols = horiz.first[x0 + w - 1] + horiz.count[x0 + w - 1] - first;
    const temp = new Uint8Array(cols * h * 3); // h rows of the source columns first..first + cols
    pass(src, channels, width * channels, cols, first, vert, range(y0, h), temp, cols * 3, 3);
    pass(temp, cols * 3, 3, h, 0, shift(horiz, first), range(x0, w), out, 3, w * 3);
  } else {
    const first = vert.first[y0], rows = vert.first[y0 + h - 1] + vert.count[y0 + h - 1] - first;
    const temp = new Uint8Array(w * rows * 3); // the source rows first..first + rows, w pixels each
    pass(src, width * channels, channels, rows, first, horiz, range(x0, w), temp, 3, w * 3);
    pass(temp, 3, w * 3, w, 0, shift(vert, first), range(y0, h), out, w * 3, 3); // columns are the lines
  }
  return out;
}

// Python's round() for the x.5 cases of (new - size) / 2: half to even.
export function roundHalfEven(x) {
  const f = Math.floor(x);
  if (x - f !== 0.5) return Math.round(x);
  return f % 2 === 0 ? f : f + 1;
}

// photos.preprocess's geometry: the resized size and the crop box inside it.
// What the shorter side is resized to before the centre crop: floor(S / crop_pct) (photos.short_side).
export function shortSide(size, cropPct) {
  return Math.floor(size / cropPct);
}

export function geometry(width, height, size, cropPct) {
  const short = shortSide(size, cropPct);
  const [newW, newH] = width <= height
    ? [short, Math.floor((short * height) / width)]
    : [Math.floor((short * width) / height), short];
  const left = roundHalfEven((newW - size) / 2), top = roundHalfEven((newH - size) / 2);
  return { newW, newH, left, top };
}

// The size x size centre crop (RGB bytes) of the resized photo; outside the resized photo (only when
// crop_pct > 1) is black, as Pillow's crop.
export function centreCrop(src, width, height, channels, size, cropPct) {
  const { newW, newH, left, top } = geometry(width, height, size, cropPct);
  const x0 = Math.max(left, 0), y0 = Math.max(top, 0);
  const x1 = Math.min(left + size, newW), y1 = Math.min(top + size, newH);
  const part = resizeBicubic(src, width, height, channels, newW, newH, x0, y0, x1 - x0, y1 - y0);
  if (x0 === left && y0 === top && x1 - x0 === size && y1 - y0 === size) return part;
  const crop = new Uint8Array(size * size * 3);
  for (let y = 0; y < y1 - y0; y++) {
    crop.set(part.subarray(y * (x1 - x0) * 3, (y + 1) * (x1 - x0) * 3), ((y + y0 - top) * size + x0 - left) * 3);
  }
  return crop;
}

// Float32 [3, size, size] tensor: (pixel / 255 - mean) / std in float32 steps, as numpy does it.
export function normalise(crop, size, mean, std) {
  const f = Math.fround, x = new Float32Array(3 * size * size), n = size * size;
  for (let c = 0; c < 3; c++) {
    const table = Float32Array.from({ length: 256 }, (_, v) => f(f(f(v / 255) - f(mean[c])) / f(std[c])));
    for (let i = 0; i < n; i++) x[c * n + i] = table[crop[i * 3 + c]];
  }
  return x;
}

// Flatten transparency onto white in place, as photos.load_image's paste onto a white background:
// (255 * (255 - a) + c * a) / 255 with Pillow's rounding. getImageData's unpremultiplied values give
// exactly Pillow's result for every (c, a) (tests/test_web.py checks a photo with transparency).
export function flattenOnWhite(rgba) {
  for (let i = 0; i < rgba.length; i += 4) {
    const a = rgba[i + 3];
    if (a === 255) continue;
    for (let c = i; c < i + 3; c++) {
      const t = 255 * (255 - a) + rgba[c] * a + 128;
      rgba[c] = ((t >> 8) + t) >> 8;
    }
    rgba[i + 3] = 255;
  }
  return rgba;
}

// Width and height from the first bytes of a JPEG, PNG, GIF, WebP or BMP file, without decoding it (so a
// huge photo can be refused before it takes the memory); null for other or unrecognised files.
export function imageSize(bytes) {
  const b = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength), n = b.byteLength;
  const u8 = (i) => (i < n ? b.getUint8(i) : 0), u16 = (i, le) => (i + 1 < n ? b.getUint16(i, le) : 0);
  const u32 = (i, le) => (i + 3 < n ? b.getUint32(i, le) : 0), tag = (i) => String.fromCharCode(u8(i), u8(i + 1), u8(i + 2), u8(i + 3));
  if (u16(0) === 0xffd8) { // JPEG: walk the segments to the frame header (SOFn)
    for (let i = 2; i + 9 < n;) {
      if (u8(i) !== 0xff) return null;
      const marker = u8(i + 1);
      if (marker === 0xff) { i += 1; continue; }
      if (marker === 0x01 || (marker >= 0xd0 && marker <= 0xd8)) { i += 2; continue; }
      if (marker >= 0xc0 && marker <= 0xcf && ![0xc4, 0xc8, 0xcc].includes(marker)) return [u16(i + 7), u16(i + 5)];
      i += 2 + u16(i + 2);
    }
    return null;
  }
  if (u32(0) === 0x89504e47 && tag(12) === "IHDR") return [u32(16), u32(20)];
  if (tag(0) === "GIF8") return [u16(6, true), u16(8, true)];
  if (tag(0) === "RIFF" && tag(8) === "WEBP") {
    if (tag(12) === "VP8 ") return [u16(26, true) & 0x3fff, u16(28, true) & 0x3fff];
    if (tag(12) === "VP8L") { const v = u32(21, true); return [(v & 0x3fff) + 1, ((v >>> 14) & 0x3fff) + 1]; }
    if (tag(12) === "VP8X") return [(u32(24, true) & 0xffffff) + 1, (u32(27, true) & 0xffffff) + 1];
  }
  if (u16(0) === 0x424d) return [u32(18, true), Math.abs(b.getInt32(22, true))];
  return null;
}

export const MAX_ASPECT = 10; // photos.MAX_ASPECT: an image with one side more than 10 times the other is refused

// photos.too_elongated: whether one side is more than MAX_ASPECT times the other (not a photo of a lesion; its
// centre crop would show under a tenth of it).
export function tooElongated(width, height) {
  return Math.max(width, height) > MAX_ASPECT * Math.min(width, height);
}

// photos.load_image: decode a photo as upright pixels, as the browser shows it: EXIF orientation applied, no colour
// management, no premultiplication. Returns {width, height, rgba} with transparency flattened onto white, or
// rgba null when the photo has maxPixels or more (checked before the pixels are read out). Rejects if the
// file is not an image the browser can decode. 16-bit PNGs come out of Chromium as the high byte (v >> 8).
export async function loadImage(blob, maxPixels = Infinity) {
  const bitmap = await createImageBitmap(blob, {
    imageOrientation: "from-image", colorSpaceConversion: "none", premultiplyAlpha: "none",
  });
  const { width, height } = bitmap;
  try {
    if (width * height >= maxPixels) return { width, height, rgba: null };
    const canvas = new OffscreenCanvas(width, height);
    const context = canvas.getContext("2d", { willReadFrequently: true });
    context.drawImage(bitmap, 0, 0);
    return { width, height, rgba: flattenOnWhite(context.getImageData(0, 0, width, height).data) };
  } finally {
    bitmap.close();
  }
}

// Bilinear upsampling of an h x w map to size x size (half-pixel centres, edges clamped: as
// torch.nn.functional.interpolate(mode="bilinear", align_corners=False)).
export function upsampleBilinear(map, h, w, size) {
  const out = new Float32Array(size * size);
  const at = (i, n) => {
    const s = Math.min(Math.max(((i + 0.5) * n) / size - 0.5, 0), n - 1);
    const i0 = Math.floor(s), i1 = Math.min(i0 + 1, n - 1);
    return [i0, i1, s - i0];
  };
  for (let y = 0; y < size; y++) {
    const [y0, y1, fy] = at(y, h);
    for (let x = 0; x < size; x++) {
      const [x0, x1, fx] = at(x, w);
      const top = map[y0 * w + x0] * (1 - fx) + map[y0 * w + x1] * fx;
      const bottom = map[y1 * w + x0] * (1 - fx) + map[y1 * w + x1] * fx;
      out[y * size + x] = top * (1 - fy) + bottom * fy;
    }
  }
  return out;
}
