"""Tests of dataset-level codebook usage."""
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtok.metrics.codebook import CodebookUsage


def test_usage_and_perplexity_hand_values():
  u = CodebookUsage(8).update(jnp.array([[0, 0], [1, 1]])).update(np.array([2, 3, -1]))
  r = u.result()
  # Counts 2,2,1,1 of 6: four of eight codes used.
  p = np.array([2, 2, 1, 1]) / 6
  h = -(p * np.log(p)).sum()
  assert r["usage"] == 0.5 and r["dead_codes"] == 4 and r["tokens"] == 6
  assert r["perplexity"] == pytest.approx(np.exp(h))
  assert r["entropy_bits"] == pytest.approx(h / np.log(2))


def test_uniform_use_gives_perplexity_k_and_merge_adds():
  a = CodebookUsage(4).update(np.arange(4))
  b = CodebookUsage(4).update(np.arange(4))
  r = a.merge(b).result()
  assert r["perplexity"] == pytest.approx(4.0) and r["entropy_bits"] == pytest.approx(2.0)
  assert r["tokens"] == 8


def test_bad_tokens_raise():
  with pytest.raises(ValueError, match=r"tokens must lie in \[0, 4\), got values in \[0, 4\]"):
    CodebookUsage(4).update(np.array([0, 4]))
  with pytest.raises(TypeError, match="tokens must be integers"):
    CodebookUsage(4).update(np.array([0.5]))
  with pytest.raises(ValueError, match="codebook_size must be a positive int"):
    CodebookUsage(0)
