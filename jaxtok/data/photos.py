"""The bundled real-photo dataset: colour photographs shipped inside scikit-image and scikit-learn.

No download: the photographs are files inside the installed wheels (scikit-image's `astronaut`,
`coffee`, `chelsea`, `rocket`, ...; scikit-learn's `china.jpg` and `flower.jpg`).

Split: the right quarter of every photograph is held out (never used for training), so the held-out
crops come from the same scenes and colour statistics as the training crops without overlapping
them. Held-out crops are drawn like the training crops (a random down-scale 1..max_scale, a random
position) with a fixed seed, so they are the same in every run.

Training data (`PhotoCrops`): batch `i` of a run is a pure function of (seed, i). Every process
computes the same global batch and keeps its own rows, so multi-process runs read disjoint slices and
resuming is exact; the iterator state is one integer, {"step": i}.

`PhotoSource` exposes the training photographs as a random-access source of records
{"image": uint8 [h, w, 3], "label": int32 photo index} for the grain pipeline
(`jaxtok.data.pipeline`), where random crops come from the pipeline's preprocessing instead.
"""
from __future__ import annotations

import numpy as np

# Only photographs shipped inside the scikit-image wheel (others would need a download).
SKIMAGE_PHOTOS: tuple[str, ...] = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry",
                                   "motorcycle_left", "retina", "hubble_deep_field")
HELDOUT_SEED = 1234


def bundled_photos() -> list[np.ndarray]:
  """Every bundled colour photograph as a uint8 [h, w, 3] array (a fixed order)."""
  return [p for _, p in named_photos()]


def named_photos() -> list[tuple[str, np.ndarray]]:
  """(name, uint8 [h, w, 3]) of every bundled colour photograph, in `bundled_photos`' order; the
  scikit-learn ones are named "china" and "flower"."""
  import skimage.data as skd  # pylint: disable=g-import-not-at-top
  photos = []
  for n in SKIMAGE_PHOTOS:
    try:
      im = skd.stereo_motorcycle()[0] if n == "motorcycle_left" else getattr(skd, n)()
    except Exception:  # an optional image missing from this scikit-image build.
      continue
    im = np.asarray(im)
    if im.ndim == 3 and im.shape[-1] >= 3:
      photos.append((n, np.ascontiguousarray(im[..., :3]).astype(np.uint8)))
  try:
    from sklearn.datasets import load_sample_images  # pylint: disable=g-import-not-at-top
    photos += [(n, np.asarray(im, np.uint8))
               for n, im in zip(("china", "flower"), load_sample_images().images)]
  except Exception:  # scikit-learn absent or without its sample images.
    pass
  if len(photos) < 3:
    raise RuntimeError("fewer than 3 bundled photographs were found (scikit-image / scikit-learn)")
  return photos


# Photographs that ship with dependencies but that no training run reads: whole unseen scenes, for
# evaluations at sizes the held-out strips cannot give (256 x 256). The scikit-image ones are
# greyscale and enter as three equal channels.
UNSEEN_PHOTOS: tuple[str, ...] = ("grace_hopper", "camera", "brick", "gravel", "grass", "moon")


def unseen_photos() -> list[tuple[str, np.ndarray]]:
  """(name, uint8 [h, w, 3]) of `UNSEEN_PHOTOS`: matplotlib's sample `grace_hopper.jpg` (colour,
  600 x 512) and scikit-image's greyscale 512 x 512 photographs; none is in `bundled_photos`."""
  import matplotlib.cbook  # pylint: disable=g-import-not-at-top
  import skimage.data as skd  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  out = []
  for name in UNSEEN_PHOTOS:
    if name == "grace_hopper":
      path = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
      im = np.asarray(Image.open(path).convert("RGB"), np.uint8)
    else:
      im = np.repeat(np.asarray(getattr(skd, name)(), np.uint8)[..., None], 3, axis=-1)
    out.append((name, im))
  return out


def grid_crops(photos: list[np.ndarray], image_size: int) -> np.ndarray:
  """Every non-overlapping image_size x image_size crop of each photo on a grid from its top-left
  corner, at full resolution, uint8 [N, S, S, 3] (photo by photo, rows then columns)."""
  if not isinstance(image_size, int) or image_size < 1:
    raise ValueError(f"image_size must be a positive int, got {image_size!r}")
  crops = [p[y:y + image_size, x:x + image_size] for p in photos
           for y in range(0, p.shape[0] - image_size + 1, image_size)
           for x in range(0, p.shape[1] - image_size + 1, image_size)]
  if not crops:
    raise ValueError(f"no photo is at least {image_size} x {image_size}")
  return np.stack(crops).astype(np.uint8)


def split_photos(photos: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
  """(left three quarters of each photo for training, right quarter held out)."""
  train, held = [], []
  for p in photos:
    cut = (3 * p.shape[1]) // 4
    train.append(p[:, :cut])
    held.append(p[:, cut:])
  return train, held


def heldout_crops(strips: list[np.ndarray], *, image_size: int, count: int,
                  max_scale: int = 4) -> np.ndarray:
  """`count` fixed crops float32 [N, S, S, 3] in [0, 1] from the held-out strips (seed HELDOUT_SEED)."""
  crops = []
  rng = np.random.default_rng(HELDOUT_SEED)
  while len(crops) < count:
    p = strips[len(crops) % len(strips)]
    fits = [sc for sc in range(1, max_scale + 1)
            if p.shape[0] // sc >= image_size and p.shape[1] // sc >= image_size]
    if not fits:
      raise ValueError(f"held-out strips are smaller than image_size={image_size}")
    scale = fits[int(rng.integers(len(fits)))]
    small = p[::scale, ::scale]
    y = int(rng.integers(0, small.shape[0] - image_size + 1))
    x = int(rng.integers(0, small.shape[1] - image_size + 1))
    crops.append(small[y:y + image_size, x:x + image_size])
  if not crops:
    return np.zeros((0, image_size, image_size, 3), np.float32)
  return np.stack(crops[:count]).astype(np.float32) / 255.0


def load_photos(image_size: int, heldout: int, max_scale: int = 4) -> tuple[list[np.ndarray], np.ndarray]:
  """(train photos as uint8 [h, w, 3] arrays, held-out crops float32 [N, S, S, 3] in [0, 1])."""
  if not isinstance(image_size, int) or image_size < 1:
    raise ValueError(f"image_size must be a positive int, got {image_size!r}")
  if not isinstance(heldout, int) or heldout < 0:
    raise ValueError(f"heldout must be an int >= 0, got {heldout!r}")
  if not isinstance(max_scale, int) or max_scale < 1:
    raise ValueError(f"max_scale must be an int >= 1, got {max_scale!r}")
  train, strips = split_photos(bundled_photos())
  return train, heldout_crops(strips, image_size=image_size, count=heldout, max_scale=max_scale)


class PhotoCrops:
  """Random crops (at a random down-scale from 1 to `max_scale`, random horizontal flip) of photos.

  Batch `i` of the run is a pure function of (seed, i): every process computes the same global batch
  and keeps its own rows, so multi-process runs read disjoint slices and resuming is exact.
  State: {"step": i} (the next batch index). Batches are float32 [global_batch / processes, S, S, 3];
  after each, `last_photos` int32 [global_batch / processes] holds the index (into `photos`) of the
  photograph each row was cropped from (for per-photo captions).
  """

  def __init__(self, photos: list[np.ndarray], *, image_size: int, global_batch: int, seed: int,
               max_scale: int = 4, process_index: int = 0, process_count: int = 1):
    if global_batch % process_count:
      raise ValueError(f"data.batch_size ({global_batch}) must be divisible by the process count "
                       f"({process_count})")
    if not 0 <= process_index < process_count:
      raise ValueError(f"process_index must lie in [0, {process_count}), got {process_index}")
    self._scaled, self._owner = [], []  # owner: the photo index of each scaled copy
    for j, p in enumerate(photos):
      for s in range(1, max_scale + 1):
        small = p[::s, ::s]
        if small.shape[0] >= image_size and small.shape[1] >= image_size:
          self._scaled.append(small)
          self._owner.append(j)
    if not self._scaled:
      raise ValueError(f"no photograph is at least {image_size}x{image_size}")
    self.image_size, self.global_batch, self.seed = image_size, global_batch, seed
    self.local = global_batch // process_count
    self.offset = process_index * self.local
    self.step = 0

  def get_state(self) -> dict:
    return {"step": int(self.step)}

  def set_state(self, state: dict) -> None:
    if "step" not in state:
      raise ValueError(f"PhotoCrops state must hold 'step', got keys {sorted(state)}")
    self.step = int(state["step"])

  def __iter__(self):
    return self

  def __next__(self) -> np.ndarray:
    rng = np.random.default_rng([self.seed, self.step])
    s = self.image_size
    out = np.empty((self.global_batch, s, s, 3), np.uint8)
    owner = np.empty(self.global_batch, np.int32)
    for i in range(self.global_batch):
      pick = int(rng.integers(len(self._scaled)))
      p, owner[i] = self._scaled[pick], self._owner[pick]
      y = int(rng.integers(0, p.shape[0] - s + 1))
      x = int(rng.integers(0, p.shape[1] - s + 1))
      crop = p[y:y + s, x:x + s]
      out[i] = crop[:, ::-1] if rng.random() < 0.5 else crop
    self.step += 1
    self.last_photos = owner[self.offset:self.offset + self.local]  # which photo each row shows
    return out[self.offset:self.offset + self.local].astype(np.float32) / 255.0


class PhotoSource:
  """Random-access source over photographs: record i = {"image": uint8 [h, w, 3], "label": i}.

  Photographs differ in size, so a pipeline over this source must crop or resize them (e.g.
  `preprocess.random_crop` after a random down-scale) before batching.
  """

  def __init__(self, photos: list[np.ndarray]):
    if not photos:
      raise ValueError("photos must hold at least one image, got none")
    for i, p in enumerate(photos):
      if not (isinstance(p, np.ndarray) and p.ndim == 3 and p.shape[-1] == 3 and p.dtype == np.uint8):
        raise ValueError(f"photos[{i}] must be a uint8 [h, w, 3] array, got "
                         f"{getattr(p, 'dtype', type(p).__name__)} {getattr(p, 'shape', '')}")
    self._photos = list(photos)

  def __len__(self) -> int:
    return len(self._photos)

  def __getitem__(self, index: int) -> dict:
    return {"image": self._photos[index], "label": np.int32(index)}
