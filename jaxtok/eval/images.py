"""Image files for the tools: folders of PNG/JPEG -> float32 [N, S, S, 3] in [0, 1], grids, PNGs.

Fitting an arbitrary image to the model's S x S input (`fit`):
  "crop"     resize (antialiased) so the short side is S, then the central S x S window (the
             evaluation convention of the reference tokenizers; keeps the aspect ratio);
  "stretch"  resize both sides to S (no pixel is dropped; the aspect ratio changes).
Greyscale and RGBA files become RGB (alpha dropped); 16-bit and float files keep their precision
(float32 scaled to [0, 1], see `read_image`), and files over `max_pixels` are refused by name.
Folders are read recursively in sorted order; with class subfolders (`folder/<class>/*.png`) each
file's label is the index of its sorted subfolder name.
"""
from __future__ import annotations

import contextlib
import os
import threading
from typing import Iterator, Sequence

import numpy as np

from jaxtok.data import preprocess as pp

EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
MAX_PIXELS_ENV = "JAXTOK_MAX_PIXELS"  # read_image's size limit when none is passed
FITS = ("crop", "stretch")


def list_images(folder: str, *, flag: str = "--input") -> list[str]:
  """Sorted image paths relative to `folder` (recursive). Raises naming `flag` when there are none."""
  if not folder:
    raise ValueError(f"{flag} is required: a folder of {'/'.join(EXTENSIONS)} images")
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"{flag}: expected a folder of images, {folder!r} "
                            f"{'is a file' if os.path.exists(folder) else 'does not exist'}")
  out = []
  for root, dirs, files in os.walk(folder):
    dirs.sort()
    for name in sorted(files):
      if name.lower().endswith(EXTENSIONS) and not name.startswith("."):
        out.append(os.path.relpath(os.path.join(root, name), folder))
  out.sort()
  if not out:
    raise ValueError(f"{flag}: expected at least one image ({', '.join(EXTENSIONS)}) in {folder!r}, "
                     f"found 0")
  return out


def folder_labels(paths: Sequence[str]) -> tuple[np.ndarray, list[str]]:
  """(labels int32 [N], class names): the index of each path's top-level subfolder, or -1 (none)."""
  classes = sorted({p.split(os.sep)[0] for p in paths if os.sep in p})
  index = {c: i for i, c in enumerate(classes)}
  labels = [index[p.split(os.sep)[0]] if os.sep in p else -1 for p in paths]
  return np.asarray(labels, np.int32), classes


def read_image(path: str, *, max_pixels: float | None = None) -> np.ndarray:
  """[H, W, 3] of an image file: uint8 for 8-bit files, float32 in [0, 1] for deeper ones.

  Modes (PIL's names): 1, L, P, RGB, RGBA, LA, CMYK, YCbCr, ... (8 bits a channel) become uint8 RGB
  through PIL (alpha dropped, palettes expanded); I;16* (16-bit grey) is v / 65535; I (32-bit
  integers, e.g. 16-bit grey from other readers) must lie in [0, 65535] and is v / 65535; F (32-bit
  float) must be finite and lie in [0, 1] and is kept as it is. 16-bit colour PNGs (RGB, RGBA,
  grey + alpha, not interlaced), which PIL reduces to their high bytes, are decoded here
  (`_decode_png16`): v / 65535 (interlaced ones keep PIL's 8 bits). Out-of-range I and F values raise rather than being clipped into a silently different image.

  max_pixels: the largest width * height accepted (a decompression-bomb guard); None uses the
  environment variable JAXTOK_MAX_PIXELS when set (how the command-line tools are given a limit),
  else PIL's `Image.MAX_IMAGE_PIXELS` (about 89.5 megapixels unless changed); float("inf") accepts
  any size.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  limit = max_pixels
  if limit is None:
    env = os.environ.get(MAX_PIXELS_ENV, "").strip()
    try:
      limit = float(env) if env else Image.MAX_IMAGE_PIXELS
    except ValueError:
      raise ValueError(f"{MAX_PIXELS_ENV} must be a number of pixels, got {env!r}") from None
  try:
    with _open_unchecked(path) as im:
      width, height = im.size
      if limit is not None and width * height > limit:
        raise _TooLarge(f"image {path!r} is {width} x {height} = {width * height:,} pixels, over the "
                        f"limit of {int(limit):,} (a guard against decompression bombs); to read it "
                        f"pass max_pixels={width * height} (or float('inf')) to read_image / "
                        f"load_images, or set {MAX_PIXELS_ENV}={width * height} for the tools")
      if _png_16bit_colour(im):
        return _decode_png16(path)
      return _to_rgb(im)
  except _TooLarge as err:
    raise ValueError(str(err)) from None
  except (OSError, ValueError, SyntaxError) as err:
    raise ValueError(f"cannot read image {path!r}: {err}") from err


class _TooLarge(Exception):
  """Raised inside `read_image` so the size error is not re-wrapped as "cannot read"."""


_OPEN_LOCK = threading.Lock()


@contextlib.contextmanager
def _open_unchecked(path: str):
  """PIL's Image.open without PIL's own size check, which raises (beyond 2x its limit) an error that
  does not name the file and cannot be lifted for one call; `read_image` checks the size itself.
  Opening only parses the header, so the global limit is lifted for microseconds (under a lock, so
  concurrent readers restore it correctly)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with _OPEN_LOCK:
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
      im = Image.open(path)
    finally:
      Image.MAX_IMAGE_PIXELS = saved
  with im:
    yield im


def _to_rgb(im) -> np.ndarray:
  """[H, W, 3] uint8 (8-bit modes) or float32 in [0, 1] (16/32-bit grey) of an open PIL image."""
  if im.mode.startswith("I;16"):
    grey = np.asarray(im).astype(np.float32) / 65535.0
  elif im.mode in ("I", "F"):
    values = np.asarray(im)
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    top = 65535.0 if im.mode == "I" else 1.0
    if not (np.isfinite(lo) and np.isfinite(hi) and 0.0 <= lo and hi <= top):
      raise ValueError(f"mode {im.mode} values must lie in [0, {top:g}] "
                       f"({'16-bit grey' if im.mode == 'I' else 'float intensities'}), got [{lo}, {hi}]")
    grey = values.astype(np.float32) / np.float32(top)
  else:
    return np.asarray(im.convert("RGB"), np.uint8)
  return np.repeat(grey[..., None], 3, axis=-1)


_PNG_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # PNG colour type -> samples per pixel


def _png_16bit_colour(im) -> bool:
  """A non-interlaced 16-bit PNG with colour or alpha (types 2, 4, 6), which PIL reads as 8 bits."""
  tile = getattr(im, "tile", None) or []
  # A tile is (decoder, extents, offset, raw mode); the raw mode names the file's sample layout.
  return (im.format == "PNG" and len(tile) == 1 and not im.info.get("interlace")
          and str(tile[0][3]) in ("RGB;16B", "RGBA;16B", "LA;16B"))


def _png_chunks(data: bytes):
  """(type, body) of each chunk of a PNG file's bytes."""
  if data[:8] != b"\x89PNG\r\n\x1a\n":
    raise ValueError("not a PNG file")
  pos = 8
  while pos + 8 <= len(data):
    length = int.from_bytes(data[pos:pos + 4], "big")
    yield data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
    pos += 12 + length


def _decode_png16(path: str) -> np.ndarray:
  """float32 [H, W, 3] in [0, 1] (v / 65535) of a non-interlaced 16-bit PNG of any colour type.

  PNG stores each row after a per-row filter (0 none, 1 sub: minus the byte one pixel to the left,
  2 up: minus the byte above, 3 average of the two, 4 Paeth's predictor of left, up, up-left). A
  pixel's prediction needs its left and upper neighbours decoded first, so rows cannot be undone
  independently, and one pixel at a time in Python is slow; the pixels of one anti-diagonal
  (y + x = t) depend only on earlier diagonals, so they are decoded together, H + W - 1 numpy steps.
  The bytes are kept skewed, row y shifted right by y, so diagonal t is one column.
  """
  import zlib  # pylint: disable=g-import-not-at-top
  with open(path, "rb") as f:
    data = f.read()
  header, idat = None, []
  for kind, body in _png_chunks(data):
    if kind == b"IHDR":
      header = body
    elif kind == b"IDAT":
      idat.append(body)
  if header is None or len(header) < 13:
    raise ValueError("PNG without an IHDR header")
  width, height = int.from_bytes(header[0:4], "big"), int.from_bytes(header[4:8], "big")
  depth, colour, interlace = header[8], header[9], header[12]
  if depth != 16 or colour not in _PNG_CHANNELS or interlace:
    raise ValueError(f"expected a non-interlaced 16-bit PNG, got bit depth {depth}, colour type "
                     f"{colour}, interlace {interlace}")
  channels = _PNG_CHANNELS[colour]
  bpp = 2 * channels  # bytes per pixel: the filters' "left" distance
  size = height * (1 + width * bpp)
  # At most one byte more than the header promises is inflated: corrupt or hostile data cannot
  # expand past the size `read_image` has already checked.
  raw = np.frombuffer(zlib.decompressobj().decompress(b"".join(idat), size + 1), np.uint8)
  if raw.size != size:
    raise ValueError(f"PNG data holds {'more than ' if raw.size > size else ''}{raw.size} bytes, "
                     f"expected {size}")
  raw = raw.reshape(height, 1 + width * bpp)
  kinds = raw[:, 0].astype(np.int16)
  if kinds.max(initial=0) > 4:
    raise ValueError(f"unknown PNG row filter {int(kinds.max())}")
  # Skewed, padded: pixel (y, x) at [y + 1, y + x + 2]; row 0 and columns 0-1 stay zero, which is
  # what the filters read beyond the top and left edges.
  filtered = raw[:, 1:].reshape(height, width, bpp)
  skew = np.zeros((height + 1, height + width + 1, bpp), np.uint8)
  for y in range(height):
    skew[y + 1, y + 2:y + 2 + width] = filtered[y]
  for t in range(height + width - 1):
    y0, y1 = max(0, t - width + 1), min(height - 1, t)
    a = skew[y0 + 1:y1 + 2, t + 1].astype(np.int16)  # left
    b = skew[y0:y1 + 1, t + 1].astype(np.int16)  # up
    c = skew[y0:y1 + 1, t].astype(np.int16)  # up-left
    k = kinds[y0:y1 + 1, None]
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    paeth = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
    pred = np.select([k == 1, k == 2, k == 3, k == 4], [a, b, (a + b) >> 1, paeth], 0)
    cur = skew[y0 + 1:y1 + 2, t + 2]  # the filtered bytes of this diagonal, replaced by the decoded
    skew[y0 + 1:y1 + 2, t + 2] = (cur.astype(np.int16) + pred) & 255
  pixels = np.stack([skew[y + 1, y + 2:y + 2 + width] for y in range(height)]) if height else filtered
  values = (pixels[..., 0::2].astype(np.uint16) << 8) | pixels[..., 1::2]  # big-endian samples
  grey_or_rgb = values[..., :1] if channels <= 2 else values[..., :3]  # alpha dropped
  out = grey_or_rgb.astype(np.float32) / 65535.0
  return np.repeat(out, 3, axis=-1) if out.shape[-1] == 1 else out


def fit_image(image: np.ndarray, size: int, fit: str = "crop") -> np.ndarray:
  """Any uint8/float [H, W, C] image -> float32 [size, size, 3] in [0, 1] (see the module docstring)."""
  if fit not in FITS:
    raise ValueError(f"fit must be one of {FITS}, got {fit!r}")
  image = pp.to_rgb(image)
  scale = 255.0 if image.dtype == np.uint8 else 1.0
  if fit == "crop":
    out = pp.center_crop(pp.resize_short(image, size), size)
  else:
    out = pp.resize(image, size)
  return np.clip(np.asarray(out, np.float32) / scale, 0.0, 1.0)


def load_images(folder: str, paths: Sequence[str], size: int, fit: str = "crop", *,
                max_pixels: float | None = None) -> np.ndarray:
  """float32 [N, size, size, 3] of folder/paths (max_pixels: see `read_image`)."""
  if not paths:
    return np.zeros((0, size, size, 3), np.float32)
  return np.stack([fit_image(read_image(os.path.join(folder, p), max_pixels=max_pixels), size, fit)
                   for p in paths])


def batches(folder: str, paths: Sequence[str], size: int, batch_size: int,
            fit: str = "crop", *, max_pixels: float | None = None) -> Iterator[np.ndarray]:
  """float32 [<= batch_size, size, size, 3] batches of folder/paths, in order."""
  for i in range(0, len(paths), batch_size):
    yield load_images(folder, paths[i:i + batch_size], size, fit, max_pixels=max_pixels)


def to_uint8(images) -> np.ndarray:
  """float [..., 3] in [0, 1] -> uint8 (clipped, rounded to nearest)."""
  return np.asarray(np.round(np.clip(np.asarray(images, np.float32), 0.0, 1.0) * 255.0), np.uint8)


def save_png(path: str, image: np.ndarray, *, scale: int = 1) -> None:
  """Writes uint8 [H, W, 3] as PNG (nearest upscaling by `scale`), creating parent folders."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  img = Image.fromarray(np.asarray(image, np.uint8))
  if scale > 1:
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  img.save(path)


def grid(images: np.ndarray, *, columns: int | None = None, pad: int = 2) -> np.ndarray:
  """uint8 [N, H, W, 3] -> one uint8 image, row-major, `columns` wide (default ~sqrt(N)), white gaps."""
  images = np.asarray(images, np.uint8)
  n, h, w, _ = images.shape
  cols = max(1, min(n, columns or int(np.ceil(np.sqrt(n)))))
  rows = int(np.ceil(n / cols))
  out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, np.uint8)
  for i in range(n):
    y, x = pad + (i // cols) * (h + pad), pad + (i % cols) * (w + pad)
    out[y:y + h, x:x + w] = images[i]
  return out


def output_name(path: str) -> str:
  """A flat PNG file name for an input path ('a/b.jpg' -> 'a__b.png')."""
  return os.path.splitext(path)[0].replace(os.sep, "__") + ".png"
