"""FID statistics for the tools: the Inception feature function, image folders, saved statistics.

Reportable FIDs use the FID Inception-v3 (`jaxtok.metrics.inception`) with weights the user supplies
(`--inception_weights`, the pytorch-fid file or a converted .npz/.safetensors); nothing is
downloaded. Statistics are accumulated in float64 (`jaxtok.metrics.fid.FeatureStats`) and can be
saved as `.npz` with `mu` [F], `sigma` [F, F] and `count` (pytorch-fid's key names), so a reference
set is featurised once.
"""
from __future__ import annotations

import os
from typing import Callable, Iterable

import numpy as np

from jaxtok.eval import images as img_lib
from jaxtok.metrics import fid as fid_lib

FeatureFn = Callable[[np.ndarray], np.ndarray]


def inception_features(weights_path: str, *, flag: str = "--inception_weights") -> FeatureFn:
  """features(images float32 [B, H, W, 3] in [0, 1]) -> float32 [B, 2048], jitted, from a weights file."""
  import jax  # pylint: disable=g-import-not-at-top
  from jaxtok.metrics import inception  # pylint: disable=g-import-not-at-top
  if not weights_path or not os.path.isfile(weights_path):
    raise FileNotFoundError(f"{flag}: expected the FID Inception weights file (pytorch-fid's "
                            f"pt_inception-2015-12-05-6726825d.pth, or .npz/.safetensors); "
                            f"{weights_path!r} does not exist (jaxtok never downloads it)")
  params = inception.load_params(weights_path)
  fn = jax.jit(inception.features)
  return lambda images: np.asarray(fn(params, jax.numpy.asarray(images, jax.numpy.float32)))


def stats_of_batches(batches: Iterable[np.ndarray], features: FeatureFn) -> fid_lib.FeatureStats:
  """FeatureStats of the features of every image in `batches` (float [B, H, W, 3] in [0, 1])."""
  stats = None
  for batch in batches:
    f = np.asarray(features(batch), np.float64)
    stats = stats or fid_lib.FeatureStats(f.shape[1])
    stats.update(f)
  if stats is None:
    raise ValueError("no images to compute statistics of")
  return stats


def stats_of_folder(folder: str, features: FeatureFn, *, size: int | None = None, batch_size: int = 50,
                    flag: str = "--samples") -> fid_lib.FeatureStats:
  """FeatureStats of every image under `folder`, fitted (crop) to `size` (default: the first image's
  short side, so same-size sample folders are read unchanged)."""
  paths = img_lib.list_images(folder, flag=flag)
  if size is None:
    size = min(img_lib.read_image(os.path.join(folder, paths[0])).shape[:2])
  return stats_of_batches(img_lib.batches(folder, paths, size, batch_size), features)


def save_stats(path: str, stats: fid_lib.FeatureStats) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  np.savez(path, mu=stats.mean, sigma=stats.covariance(), count=np.int64(stats.count))


def load_stats(path: str, *, flag: str = "--reference") -> tuple[np.ndarray, np.ndarray, int]:
  """(mu [F], sigma [F, F], count) of a saved statistics .npz (count -1 when not recorded)."""
  with np.load(path, allow_pickle=False) as f:
    if "mu" not in f.files or "sigma" not in f.files:
      raise ValueError(f"{flag}: {path!r} must hold 'mu' and 'sigma' arrays, found {sorted(f.files)}")
    return f["mu"], f["sigma"], int(f["count"]) if "count" in f.files else -1


def reference_stats(path: str, features: FeatureFn, *, batch_size: int = 50,
                    flag: str = "--reference") -> tuple[np.ndarray, np.ndarray, int]:
  """(mu, sigma, count) of a reference: a statistics .npz or a folder of images."""
  if not path or not os.path.exists(path):
    raise FileNotFoundError(f"{flag}: expected a folder of images or a statistics .npz (mu, sigma), "
                            f"{path!r} does not exist")
  if os.path.isdir(path):
    stats = stats_of_folder(path, features, batch_size=batch_size, flag=flag)
    return stats.mean, stats.covariance(), stats.count
  return load_stats(path, flag=flag)


def fid_against(stats: fid_lib.FeatureStats, reference: tuple[np.ndarray, np.ndarray, int]) -> float:
  mu, sigma, _ = reference
  if mu.shape[0] != stats.dim:
    raise ValueError(f"reference statistics have {mu.shape[0]} features, the samples' have {stats.dim} "
                     "(made with another feature network?)")
  return fid_lib.frechet_distance(stats.mean, stats.covariance(), mu, sigma)
