"""Norm, Mlp and RoPE against hand-written formulas and hand-derived values."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtok.nn import mlp, norm, rope


@pytest.mark.parametrize("kind", norm.KINDS)
@pytest.mark.parametrize("affine", [True, False])
def test_norm_formulas_in_float32_with_compute_dtype_output(kind, affine):
  n = norm.Norm(5, kind=kind, eps=1e-6, affine=affine, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
  if affine:
    n.scale.set_value(jnp.arange(1.0, 6.0))
  x = np.random.RandomState(0).randn(2, 3, 5)
  got = n(jnp.asarray(x, jnp.float32))
  assert got.dtype == jnp.bfloat16
  if kind == "layer":
    want = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-6)
  else:
    want = x / np.sqrt((x**2).mean(-1, keepdims=True) + 1e-6)
  want = want * (np.arange(1.0, 6.0) if affine else 1.0)
  np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=1e-2, atol=1e-2)
  names = sorted(nnx.state(n).keys())
  assert names == ([] if not affine else ["bias", "scale"] if kind == "layer" else ["scale"])


def test_mlp_gelu_and_swiglu():
  x = jax.random.normal(jax.random.key(0), (2, 3, 4))
  g = mlp.Mlp(4, 8, rngs=nnx.Rngs(0))
  up, down = g.up.kernel.get_value(), g.down.kernel.get_value()
  erf_gelu = lambda h: 0.5 * h * (1 + jax.scipy.special.erf(h / math.sqrt(2)))
  np.testing.assert_allclose(g(x), erf_gelu(x @ up) @ down, rtol=1e-5, atol=1e-6)
  s = mlp.Mlp(4, 8, kind="swiglu", use_bias=False, rngs=nnx.Rngs(0))
  want = (jax.nn.silu(x @ s.gate.kernel.get_value()) * (x @ s.up.kernel.get_value())) @ s.down.kernel.get_value()
  np.testing.assert_allclose(s(x), want, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="mlp kind"):
    mlp.Mlp(4, 8, kind="relu", rngs=nnx.Rngs(0))


def _rotated(x, p, theta):
  """Hand-derived half-split RoPE of one 4-channel head at position p: pairs (0, 2) at frequency 1
  and (1, 3) at frequency theta^(-1/2)."""
  a, b, c, d = x
  w = theta**-0.5
  return [a * math.cos(p) - c * math.sin(p), b * math.cos(w * p) - d * math.sin(w * p),
          a * math.sin(p) + c * math.cos(p), b * math.sin(w * p) + d * math.cos(w * p)]


def test_rope_1d_hand_derived_values():
  x = jnp.asarray([1.0, 2.0, 3.0, 4.0]).reshape(1, 1, 1, 4)
  got = rope.rope_1d(x, jnp.array([2]), theta=100.0)
  np.testing.assert_allclose(got.reshape(-1), _rotated([1.0, 2.0, 3.0, 4.0], 2, 100.0), rtol=1e-6)
  # Position 0 is the identity; the batch form [B, T] gives the same.
  np.testing.assert_allclose(rope.rope_1d(x, jnp.array([[0]])), x)


def test_rope_2d_hand_derived_values():
  v = [0.5, -1.0, 2.0, 1.5, -0.3, 0.7, 1.1, -2.0]
  x = jnp.asarray(v).reshape(1, 1, 1, 8)
  got = rope.rope_2d(x, jnp.array([[1, 3]]), theta=100.0).reshape(-1)
  np.testing.assert_allclose(got[:4], _rotated(v[:4], 1, 100.0), rtol=1e-6)  # rows
  np.testing.assert_allclose(got[4:], _rotated(v[4:], 3, 100.0), rtol=1e-6)  # columns
  np.testing.assert_array_equal(rope.grid_positions(2, 3), [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]])


def test_rope_preserves_norm_and_depends_on_relative_positions_only():
  x = jax.random.normal(jax.random.key(0), (1, 5, 2, 8))
  y = rope.rope_1d(x, jnp.arange(5))
  np.testing.assert_allclose(jnp.linalg.norm(y, axis=-1), jnp.linalg.norm(x, axis=-1), rtol=1e-5)
  q, k = x[:, :1], x[:, 1:2]
  dot = lambda pq, pk: jnp.sum(rope.rope_1d(q, jnp.array([pq])) * rope.rope_1d(k, jnp.array([pk])))
  np.testing.assert_allclose(dot(3, 1), dot(7, 5), rtol=1e-4, atol=1e-5)
  g = lambda pq, pk: jnp.sum(rope.rope_2d(q, jnp.array([pq])) * rope.rope_2d(k, jnp.array([pk])))
  np.testing.assert_allclose(g([3, 1], [1, 4]), g([5, 2], [3, 5]), rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError, match="divisible by 4"):
    rope.rope_2d(jnp.zeros((1, 1, 1, 6)), jnp.zeros((1, 2)))
