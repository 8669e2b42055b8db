"""Frechet distance between Gaussian fits of feature sets, with streaming statistics.

FID = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2}).

Everything here runs in float64 numpy on the host: the feature covariances of FID are ill-conditioned
(2048 dims from tens of thousands of images), and float32 loses the trace term. The matrix square
root uses the symmetric form Tr((S1 S2)^{1/2}) = Tr((A S2 A)^{1/2}) with A = S1^{1/2}: both square
roots are of symmetric positive semi-definite matrices, so an eigendecomposition gives them exactly
(no complex parts, no iterative sqrtm, no scipy).

Dimension names: N samples, F feature dimension.
"""
from __future__ import annotations

import dataclasses

import numpy as np


def _psd_sqrt(m: np.ndarray) -> np.ndarray:
  """Square root of a symmetric positive semi-definite matrix; tiny negative eigenvalues are zeroed."""
  m = (m + m.T) / 2
  w, v = np.linalg.eigh(m)
  return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
  """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2).

  Args:
    mu1, mu2: [F] means.
    sigma1, sigma2: [F, F] covariances (symmetric positive semi-definite).

  Returns:
    The distance as a Python float (computed in float64). It is >= 0 up to rounding.

  Raises:
    ValueError: if the shapes do not agree.
  """
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  if mu1.ndim != 1 or mu1.shape != mu2.shape:
    raise ValueError(f"mu1 and mu2 must be vectors of one length, got shapes {mu1.shape} and {mu2.shape}")
  f = mu1.shape[0]
  for name, s in (("sigma1", sigma1), ("sigma2", sigma2)):
    if s.shape != (f, f):
      raise ValueError(f"{name} must have shape ({f}, {f}) to match the means, got {s.shape}")
  a = _psd_sqrt(sigma1)
  cross = np.trace(_psd_sqrt(a @ sigma2 @ a))
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * cross)


@dataclasses.dataclass
class FeatureStats:
  """Streaming mean and covariance of features, accumulated in float64.

  Batches are merged with Chan et al.'s pairwise update of the mean and the centred scatter matrix,
  which stays accurate where the textbook sum-of-squares formula cancels catastrophically.
  Stats from different hosts or shards merge with `merge`.
  """
  dim: int
  count: int = 0
  mean: np.ndarray | None = None
  scatter: np.ndarray | None = None

  def __post_init__(self):
    if self.mean is None:
      self.mean = np.zeros((self.dim,), np.float64)
    if self.scatter is None:
      self.scatter = np.zeros((self.dim, self.dim), np.float64)

  def update(self, features) -> "FeatureStats":
    """Adds a batch of features [N, F] (any float dtype; a jax array is fetched to the host)."""
    x = np.asarray(features, np.float64)
    if x.ndim != 2 or x.shape[1] != self.dim:
      raise ValueError(f"features must have shape [N, {self.dim}], got {x.shape}")
    if x.shape[0] == 0:
      return self
    batch = FeatureStats(self.dim, x.shape[0], x.mean(0), None)
    centred = x - batch.mean
    batch.scatter = centred.T @ centred
    return self.merge(batch)

  def merge(self, other: "FeatureStats") -> "FeatureStats":
    """Combines another set of statistics into this one (in place) and returns self."""
    if other.dim != self.dim:
      raise ValueError(f"cannot merge stats of dim {other.dim} into dim {self.dim}")
    n = self.count + other.count
    if other.count == 0:
      return self
    delta = other.mean - self.mean
    self.scatter = self.scatter + other.scatter + np.outer(delta, delta) * (self.count * other.count / n)
    self.mean = self.mean + delta * (other.count / n)
    self.count = n
    return self

  def covariance(self) -> np.ndarray:
    """Unbiased sample covariance [F, F] (divides by N - 1, as numpy.cov and the FID reference do)."""
    if self.count < 2:
      raise ValueError(f"covariance needs at least 2 samples, got {self.count}")
    return self.scatter / (self.count - 1)


def fid_from_stats(a: FeatureStats, b: FeatureStats) -> float:
  """FID between two accumulated feature sets."""
  return frechet_distance(a.mean, a.covariance(), b.mean, b.covariance())


def fid_from_features(features_a, features_b) -> float:
  """FID between two feature arrays [N, F] and [M, F]."""
  fa = np.asarray(features_a, np.float64)
  fb = np.asarray(features_b, np.float64)
  if fa.ndim != 2 or fb.ndim != 2 or fa.shape[1] != fb.shape[1]:
    raise ValueError(f"features must be [N, F] and [M, F] with one F, got {fa.shape} and {fb.shape}")
  return fid_from_stats(FeatureStats(fa.shape[1]).update(fa), FeatureStats(fb.shape[1]).update(fb))
