"""Image files for the tools: folders of PNG/JPEG -> float32 [N, S, S, 3] in [0, 1], grids, PNGs.

Fitting an arbitrary image to the model's S x S input (`fit`):
  "crop"     resize (antialiased) so the short side is S, then the central S x S window (the
             evaluation convention of the reference tokenizers; keeps the aspect ratio);
  "stretch"  resize both sides to S (no pixel is dropped; the aspect ratio changes).
Greyscale and RGBA files become RGB. Folders are read recursively in sorted order; with class
subfolders (`folder/<class>/*.png`) each file's label is the index of its sorted subfolder name.
"""
from __future__ import annotations

import os
from typing import Iterator, Sequence

import numpy as np

from jaxtok.data import preprocess as pp

EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
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


def read_image(path: str) -> np.ndarray:
  """uint8 [H, W, 3] of an image file."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(path) as im:
      return np.asarray(im.convert("RGB"), np.uint8)
  except (OSError, ValueError) as err:
    raise ValueError(f"cannot read image {path!r}: {err}") from err


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


def load_images(folder: str, paths: Sequence[str], size: int, fit: str = "crop") -> np.ndarray:
  """float32 [N, size, size, 3] of folder/paths."""
  if not paths:
    return np.zeros((0, size, size, 3), np.float32)
  return np.stack([fit_image(read_image(os.path.join(folder, p)), size, fit) for p in paths])


def batches(folder: str, paths: Sequence[str], size: int, batch_size: int,
            fit: str = "crop") -> Iterator[np.ndarray]:
  """float32 [<= batch_size, size, size, 3] batches of folder/paths, in order."""
  for i in range(0, len(paths), batch_size):
    yield load_images(folder, paths[i:i + batch_size], size, fit)


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
