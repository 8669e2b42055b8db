"""Tests of LFQ and BSQ: hand-derived indices, codes and losses, the entropy against a dense numpy
computation, group factorisation, gradients, transformations and input checks."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtok import sharding
from jaxtok.quantizers import lfq

_STATIC = ("inv_temperature", "entropy_weight", "diversity_gamma", "commitment_weight", "group_size",
           "spherical", "codebook_scale")
# Jitted once per shape/options: eager op-by-op dispatch is several times slower on CPU.
_quantize = jax.jit(lfq.quantize, static_argnames=_STATIC)


def _np_entropy(p, eps=1e-5):
  return -np.sum(p * np.log(np.maximum(p, eps)), axis=-1)


def _np_terms(x, inv_temperature, s, group_size):
  """Dense float64 reference: enumerate the 2^g codes of each group in MSB-first order."""
  x = np.asarray(x, np.float64)
  n, d = x.shape
  per_sample, codebook = 0.0, 0.0
  for start in range(0, d, group_size):
    codes = np.array(list(itertools.product([-s, s], repeat=group_size)))  # row j = MSB-first j
    logits = 2 * inv_temperature * x[:, start:start + group_size] @ codes.T
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    per_sample += _np_entropy(p).mean()
    codebook += _np_entropy(p.mean(0))
  return per_sample, codebook


def test_hand_indices_codes_and_commitment():
  # Bits MSB-first: [+, -, 0 -> -, +] = 1001b = 9; [+,+,+,+] = 15; [-, -, -, +] = 1.
  z = jnp.array([[0.5, -1.0, 0.0, 2.0], [1.0, 1.0, 1.0, 1.0], [-3.0, -0.1, -2.0, 0.2]])
  out = lfq.quantize(z, commitment_weight=2.0, entropy_weight=0.0)
  np.testing.assert_array_equal(out.indices, [9, 15, 1])
  assert out.indices.dtype == jnp.int32
  np.testing.assert_array_equal(out.codes, [[1, -1, -1, 1], [1, 1, 1, 1], [-1, -1, -1, 1]])
  # Squared errors: (.25 + 0 + 1 + 1) + 0 + (4 + .81 + 1 + .64) = 8.7 over 12 entries, times 2.
  np.testing.assert_allclose(out.losses["commitment"], 2.0 * 8.7 / 12, rtol=1e-6)
  assert set(out.losses) == {"commitment"}
  np.testing.assert_allclose(out.metrics["usage"], 3 / 16)
  out = _quantize(z, codebook_scale=0.5, entropy_weight=0.0)
  np.testing.assert_array_equal(out.codes[0], [0.5, -0.5, -0.5, 0.5])
  np.testing.assert_array_equal(lfq.indices_to_codes(jnp.array([9, 1]), 4, codebook_scale=0.5),
                                [[0.5, -0.5, -0.5, 0.5], [-0.5, -0.5, -0.5, 0.5]])
  np.testing.assert_array_equal(lfq.bits_to_indices(jnp.array([[1, 0, 1, 1, 0]])), [22])


@pytest.mark.parametrize("spherical", [False, True])
def test_round_trip_over_all_codes(spherical):
  d = 5
  idx = jnp.arange(2**d, dtype=jnp.int32)
  codes = lfq.indices_to_codes(idx, d, spherical=spherical, codebook_scale=2.0)
  out = _quantize(codes, entropy_weight=0.0, spherical=spherical, codebook_scale=2.0)
  np.testing.assert_array_equal(out.indices, idx)
  np.testing.assert_array_equal(out.codes, codes)
  np.testing.assert_allclose(out.metrics["usage"], 1.0)
  np.testing.assert_allclose(out.metrics["perplexity"], 32.0, rtol=1e-5)


@pytest.mark.parametrize("spherical", [False, True])
def test_entropy_matches_dense_numpy(spherical):
  d, n, inv_t, gamma, weight = 5, 9, 3.0, 0.7, 0.2
  z = jax.random.normal(jax.random.key(1), (n, d)) * 0.4
  out = _quantize(z, inv_temperature=inv_t, entropy_weight=weight, diversity_gamma=gamma,
                  spherical=spherical)
  x = np.asarray(z, np.float64)
  s = 1.0
  if spherical:
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    s = 1 / np.sqrt(d)
  ps, cb = _np_terms(x, inv_t, s, d)
  np.testing.assert_allclose(out.metrics["per_sample_entropy"], ps, rtol=1e-5)
  np.testing.assert_allclose(out.metrics["codebook_entropy"], cb, rtol=1e-5)
  np.testing.assert_allclose(out.losses["entropy"], weight * (ps - gamma * cb), rtol=1e-4, atol=1e-7)
  # g = D explicitly is the same full form.
  full = _quantize(z, inv_temperature=inv_t, entropy_weight=weight, diversity_gamma=gamma,
                   spherical=spherical, group_size=d)
  np.testing.assert_array_equal(full.losses["entropy"], out.losses["entropy"])


def test_grouped_entropy_sums_groups_and_bounds_full_form():
  # BSQ inputs: |logit| <= 2 inv_t |x||c| = 2, so every probability is >= e^-4/64 >> the 1e-5 clamp
  # and the per-sample entropy factorises exactly over groups.
  d, n = 6, 11
  z = jax.random.normal(jax.random.key(2), (n, d))
  x = np.asarray(z, np.float64)
  x = x / np.linalg.norm(x, axis=1, keepdims=True)
  s = 1 / np.sqrt(d)
  results = {}
  for g in (1, 2, 3, 6):
    out = _quantize(z, inv_temperature=1.0, spherical=True, group_size=g)
    ps, cb = _np_terms(x, 1.0, s, g)  # sum over groups of the per-group entropies
    np.testing.assert_allclose(out.metrics["per_sample_entropy"], ps, rtol=1e-5)
    np.testing.assert_allclose(out.metrics["codebook_entropy"], cb, rtol=1e-5)
    results[g] = out.metrics
  for g in (1, 2, 3):
    np.testing.assert_allclose(results[g]["per_sample_entropy"], results[6]["per_sample_entropy"],
                               rtol=1e-5)
    # Sum of marginal entropies >= joint entropy.
    assert results[g]["codebook_entropy"] >= results[6]["codebook_entropy"] - 1e-6
  # g = 1 per-sample entropy is the closed form sum of binary entropies of sigmoid(4 x s inv_t).
  p = 1 / (1 + np.exp(-4 * x * s))
  binary = -(p * np.log(p) + (1 - p) * np.log(1 - p))
  np.testing.assert_allclose(results[1]["per_sample_entropy"], binary.sum(1).mean(), rtol=1e-5)


def test_entropy_terms_within_bounds_and_extremes():
  d = 4
  z = jax.random.normal(jax.random.key(3), (64, d)) * 3
  for g in (1, 2, 4):
    m = _quantize(z, group_size=g).metrics
    for key in ("per_sample_entropy", "codebook_entropy"):
      assert 0.0 <= float(m[key]) <= d * np.log(2) + 1e-5
  # All inputs at 0: every code equally likely -> per-sample = codebook = D log 2, loss (gamma=1) 0.
  out = _quantize(jnp.zeros((3, d)))
  np.testing.assert_allclose(out.metrics["per_sample_entropy"], d * np.log(2), rtol=1e-6)
  np.testing.assert_allclose(out.metrics["codebook_entropy"], d * np.log(2), rtol=1e-6)
  np.testing.assert_allclose(out.losses["entropy"], 0.0, atol=1e-6)
  # Confident, identical inputs: per-sample ~0 and codebook ~0.
  out = _quantize(jnp.full((3, d), 5.0))
  assert float(out.metrics["per_sample_entropy"]) < 1e-4
  assert float(out.metrics["codebook_entropy"]) < 1e-4


def test_bsq_codes_on_sphere_and_same_indices_as_lfq():
  z = jax.random.normal(jax.random.key(4), (20, 9))
  for scale in (1.0, 2.5):
    out = _quantize(z, spherical=True, codebook_scale=scale)
    np.testing.assert_allclose(jnp.linalg.norm(out.codes, axis=-1), scale, rtol=1e-6)
    np.testing.assert_allclose(jnp.abs(out.codes), scale / 3.0, rtol=1e-6)
  np.testing.assert_array_equal(out.indices, _quantize(z).indices)


def test_gradients():
  z = jax.random.normal(jax.random.key(5), (6, 4))
  w = jax.random.normal(jax.random.key(6), (6, 4))
  # LFQ: straight-through is the identity.
  g = jax.grad(lambda z: jnp.sum(_quantize(z, entropy_weight=0.0).codes * w))(z)
  np.testing.assert_allclose(g, w, rtol=1e-6)
  # BSQ: through x/|x|, so the gradient is orthogonal to x: (I - u u^T) w / |x|.
  g = jax.grad(lambda z: jnp.sum(_quantize(z, spherical=True, entropy_weight=0.0).codes * w))(z)
  u = z / jnp.linalg.norm(z, axis=-1, keepdims=True)
  expected = (w - jnp.sum(w * u, -1, keepdims=True) * u) / jnp.linalg.norm(z, axis=-1, keepdims=True)
  np.testing.assert_allclose(g, expected, rtol=1e-5, atol=1e-6)
  # The entropy loss is differentiable and finite.
  g = jax.grad(lambda z: _quantize(z, group_size=2).losses["entropy"])(z)
  assert np.all(np.isfinite(g)) and float(jnp.abs(g).sum()) > 0


def test_bf16_input_gives_float32_indices():
  z = (jax.random.normal(jax.random.key(7), (50, 12)) * 1e-2).astype(jnp.bfloat16)
  out = _quantize(z, group_size=4)
  ref = _quantize(z.astype(jnp.float32), group_size=4)
  np.testing.assert_array_equal(out.indices, ref.indices)
  assert out.indices.dtype == jnp.int32 and out.codes.dtype == jnp.bfloat16
  np.testing.assert_allclose(out.losses["entropy"], ref.losses["entropy"], rtol=1e-6)


def test_large_dim_uses_per_bit_metrics():
  z = jnp.stack([jnp.ones(24), -jnp.ones(24), jnp.ones(24)])
  out = _quantize(z, entropy_weight=0.0)  # 2^24 codes > 2^20: per-bit metrics
  np.testing.assert_allclose(out.metrics["usage"], 1.0)  # both values of every bit seen
  # Per bit p = (2/3, 1/3): perplexity exp(H) per bit, product over 24 bits.
  h = -(2 / 3 * np.log(2 / 3) + 1 / 3 * np.log(1 / 3))
  np.testing.assert_allclose(out.metrics["perplexity"], np.exp(24 * h), rtol=1e-4)
  np.testing.assert_array_equal(out.indices, [2**24 - 1, 0, 2**24 - 1])


def test_jit_vmap_and_sharded():
  z = jax.random.normal(jax.random.key(8), (16, 2, 6))
  kw = dict(group_size=3, spherical=True, commitment_weight=0.5)
  ref = lfq.quantize(z, **kw)  # eager
  out = _quantize(z, **kw)
  np.testing.assert_array_equal(out.indices, ref.indices)
  np.testing.assert_allclose(out.codes, ref.codes, rtol=1e-6)
  vm = jax.vmap(lambda z: _quantize(z, **kw).indices)(z)
  np.testing.assert_array_equal(vm, ref.indices)
  mesh = sharding.make_mesh()
  zs = jax.device_put(z, sharding.batch_sharding(mesh, z.ndim))
  assert len(zs.sharding.device_set) == 8
  out = _quantize(zs, **kw)
  np.testing.assert_array_equal(out.indices, ref.indices)
  np.testing.assert_allclose(out.codes, ref.codes, rtol=1e-6)
  for tree in ("losses", "metrics"):
    for key, value in getattr(ref, tree).items():
      np.testing.assert_allclose(getattr(out, tree)[key], value, rtol=1e-5, atol=1e-7)


def test_validation_names_the_argument():
  z = jnp.zeros((2, 4))
  with pytest.raises(ValueError, match=r"z.s last dimension D \(bits per code\) must be <= 31 .*, got 32"):
    lfq.quantize(jnp.zeros((2, 32)), entropy_weight=0.0)
  with pytest.raises(TypeError, match=r"z must have a floating dtype"):
    lfq.quantize(jnp.zeros((2, 4), jnp.int32))
  with pytest.raises(ValueError, match=r"group_size must divide z's last dimension 4, got 3"):
    lfq.quantize(z, group_size=3)
  with pytest.raises(ValueError, match=r"group_size must be <= 16 .* got 20 \(None means D\)"):
    lfq.quantize(jnp.zeros((2, 20)))
  with pytest.raises(ValueError, match=r"inv_temperature must be > 0.0, got 0"):
    lfq.quantize(z, inv_temperature=0)
  with pytest.raises(ValueError, match=r"entropy_weight must be >= 0.0, got -1"):
    lfq.quantize(z, entropy_weight=-1)
  with pytest.raises(TypeError, match=r"spherical must be a bool"):
    lfq.quantize(z, spherical=1)
  with pytest.raises(TypeError, match=r"group_size must be an int"):
    lfq.quantize(z, group_size=2.0)
  with pytest.raises(ValueError, match=r"dim must be <= 31"):
    lfq.indices_to_codes(jnp.zeros((2,), jnp.int32), 40)
  with pytest.raises(TypeError, match=r"indices must have an integer dtype"):
    lfq.indices_to_codes(jnp.zeros((2,)), 4)
