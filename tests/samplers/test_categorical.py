import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtok.samplers import categorical

# Largest float32 Gumbel a naive sampler can produce: u <= 1 - 2^-24 (the largest float32 below 1),
# so G = -log(-log u) <= -log(2^-24) = 16.64; jax's mode="low" (23 bits) stops at 15.94.
NAIVE_MAX = -math.log(-math.log1p(-2.0 ** -24))


def _g(hi, lo):
  bits = jnp.asarray(np.stack([np.asarray(hi, np.uint32), np.asarray(lo, np.uint32)]))
  return np.asarray(jax.jit(categorical.gumbel_from_bits)(bits), np.float64)


def test_noise_extremes_exceed_float32_bound():
  top, bottom = _g([0xFFFFFFFF], [0xFFFFFFFF])[0], _g([0], [0])[0]
  assert abs(top - 65 * math.log(2)) < 1e-4 and abs(top - categorical.GUMBEL_MAX) < 1e-4  # 45.05
  assert abs(bottom + math.log(65 * math.log(2))) < 1e-5  # -3.808
  assert 16.0 < NAIVE_MAX < 16.7
  # Reachable gap between two classes: 48.9 nats (relative probability e^-48.9 ~ 6e-22), while
  # naive float32 noise reaches 16.64 + 4.47 = 21.1 nats only.
  assert top - bottom > 48.0 and NAIVE_MAX - (-math.log(-math.log(2.0 ** -126))) < 21.2


def test_noise_tail_is_exact_gumbel_deep_into_the_tail():
  """P(G > g) of the 64-bit noise, counted exactly over all 2^64 bit patterns (the map is monotone
  in n, so a binary search finds the threshold), equals 1 - exp(-e^-g) at g = 10, 20, 30, 40.
  Naive float32 Gumbel has P(G > g) = 0 for every g > 16.64: this test fails for it."""
  gs = np.array([10.0, 20.0, 30.0, 40.0])
  lo, hi = np.zeros(4, object), np.full(4, 2 ** 64 - 1, object)  # smallest n with G(n) > g in (lo, hi]
  for _ in range(64):
    mid = (lo + hi) // 2
    val = _g([int(m) >> 32 for m in mid], [int(m) & 0xFFFFFFFF for m in mid])
    above = val > gs
    hi = np.where(above, mid, hi)
    lo = np.where(above, lo, mid)
  count = np.array([float(2 ** 64 - int(h)) for h in hi])  # bit patterns with G > g
  expected = -np.expm1(-np.exp(-gs)) * 2.0 ** 64  # 8.4e14, 3.8e10, 1.7e6, 78.4
  assert np.all(np.abs(count - expected) <= 1 + 1e-4 * expected), (count, expected)
  assert np.all(gs[1:] > NAIVE_MAX)


def test_sampled_frequencies_match_softmax():
  logits = jnp.log(jnp.array([0.5, 0.3, 0.15, 0.05]))
  draws = jax.jit(lambda r: categorical.sample(r, jnp.broadcast_to(logits, (200_000, 4))))(jax.random.key(0))
  freq = np.bincount(np.asarray(draws), minlength=4) / 200_000
  np.testing.assert_allclose(freq, [0.5, 0.3, 0.15, 0.05], atol=0.004)  # ~4 sigma


def test_filters_hand_values():
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
  keep = lambda **kw: np.isfinite(np.asarray(categorical.filter_logits(logits, **kw)))[0].tolist()
  assert keep(top_p=0.7) == [True, True, False, False]  # mass before: 0, .5 | .8
  assert keep(top_p=0.85) == [True, True, True, False]
  assert keep(top_p=1e-6) == [True, False, False, False]
  assert keep(top_k=2) == [True, True, False, False]
  ties = jnp.array([[1.0, 1.0, 1.0, 0.0]])
  assert np.isfinite(np.asarray(categorical.filter_logits(ties, top_p=0.1)))[0].tolist() == [True] * 3 + [False]
  assert np.isfinite(np.asarray(categorical.filter_logits(ties, top_k=1)))[0].tolist() == [True] * 3 + [False]
  tail = jnp.array([[0.0, -100.0]])  # p = 4e-44: top_p = 1 must not cut it
  assert np.all(np.isfinite(np.asarray(categorical.filter_logits(tail, top_p=1.0))))


def test_temperature_zero_is_greedy_and_forbidden():
  logits = jnp.tile(jnp.array([[0.0, 5.0, 1.0]]), (64, 1))

  @jax.jit
  def run(rng):
    return (categorical.sample(rng, logits, temperature=0.0),
            categorical.sample(rng, logits, forbidden_ids=(1,), top_p=0.99))
  greedy, forbidden = map(np.asarray, run(jax.random.key(0)))
  assert np.all(greedy == 1)
  assert not np.any(forbidden == 1) and set(forbidden.tolist()) == {0, 2}


def test_errors():
  x = jnp.zeros((1, 3))
  for kw, msg in [(dict(temperature=-1.0), "temperature must be >= 0"),
                  (dict(top_k=0), r"top_k must be an int in \[1, 3\].*got 0"),
                  (dict(top_k=4), r"top_k must be an int in \[1, 3\].*got 4"),
                  (dict(top_p=0.0), r"top_p must be in \(0, 1\], got 0.0"),
                  (dict(top_p=1.5), r"top_p must be in \(0, 1\], got 1.5"),
                  (dict(forbidden_ids=(3,)), r"forbidden id 3 outside vocabulary \[0, 3\)")]:
    with pytest.raises(ValueError, match=msg):
      categorical.sample(jax.random.key(0), x, **kw)
