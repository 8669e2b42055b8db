"""Tests of the Frechet distance and the streaming feature statistics."""
import numpy as np
import pytest

from jaxtok.metrics import fid


def test_frechet_distance_of_identical_gaussians_is_zero():
  rng = np.random.default_rng(0)
  a = rng.standard_normal((50, 8))
  sigma = a.T @ a / 50
  mu = rng.standard_normal(8)
  assert abs(fid.frechet_distance(mu, sigma, mu, sigma)) < 1e-9


def test_frechet_distance_hand_values():
  # Diagonal covariances: the distance is |mu1-mu2|^2 + sum (sqrt(s1) - sqrt(s2))^2.
  mu1, mu2 = np.array([0.0, 1.0]), np.array([3.0, -1.0])
  s1, s2 = np.diag([4.0, 1.0]), np.diag([1.0, 9.0])
  expected = (9 + 4) + (2 - 1) ** 2 + (1 - 3) ** 2
  assert fid.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, abs=1e-10)


def test_frechet_distance_matches_general_formula_for_non_commuting_covariances():
  rng = np.random.default_rng(1)
  a, b = rng.standard_normal((6, 6)), rng.standard_normal((6, 6))
  s1, s2 = a @ a.T + 0.1 * np.eye(6), b @ b.T + 0.1 * np.eye(6)
  mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
  # Independent check: (S1 S2)^{1/2} from the eigendecomposition of the non-symmetric product.
  w = np.linalg.eigvals(s1 @ s2)
  cross = np.sum(np.sqrt(w.real.clip(0)))
  expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * cross
  assert fid.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)


def test_streaming_stats_equal_numpy_in_any_batching_and_merge():
  rng = np.random.default_rng(2)
  x = rng.standard_normal((301, 5)) * 3 + 1e4  # a large offset defeats naive sum-of-squares
  stats = fid.FeatureStats(5)
  for chunk in np.array_split(x, 7):
    stats.update(chunk)
  np.testing.assert_allclose(stats.mean, x.mean(0), rtol=1e-12)
  np.testing.assert_allclose(stats.covariance(), np.cov(x, rowvar=False), rtol=1e-8, atol=1e-8)
  left = fid.FeatureStats(5).update(x[:100])
  right = fid.FeatureStats(5).update(x[100:])
  merged = left.merge(right)
  np.testing.assert_allclose(merged.covariance(), np.cov(x, rowvar=False), rtol=1e-8, atol=1e-8)


def test_fid_from_features_detects_a_shift():
  rng = np.random.default_rng(3)
  a = rng.standard_normal((400, 4))
  b = rng.standard_normal((400, 4)) + np.array([1.0, 0, 0, 0])
  same = fid.fid_from_features(a, rng.standard_normal((400, 4)))
  shifted = fid.fid_from_features(a, b)
  assert same < 0.2 and shifted == pytest.approx(1.0, abs=0.35)


def test_bad_shapes_raise():
  with pytest.raises(ValueError, match="sigma2 must have shape"):
    fid.frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(2))
  with pytest.raises(ValueError, match=r"features must have shape \[N, 4\]"):
    fid.FeatureStats(4).update(np.zeros((3, 5)))
  with pytest.raises(ValueError, match="at least 2 samples"):
    fid.FeatureStats(4).update(np.zeros((1, 4))).covariance()
