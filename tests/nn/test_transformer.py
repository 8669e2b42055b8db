"""Attention and the pre-LN block against hand-written numpy, masks, dtypes, remat and grads."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxtok.sharding  # noqa: F401  (switches eager sharding off)
from jaxtok.nn import attention, transformer


def _np_ln(x, scale, bias, eps=1e-5):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu)**2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * scale + bias


def _np_gelu(x):
  erf = np.vectorize(math.erf)
  return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


def _np_attn(x, attn, mask=None):
  p = {k: np.asarray(v.get_value(), np.float64) for k, v in nnx.state(attn).items()}
  w, h, e = p["qkv"].shape[0], p["qkv"].shape[2], p["qkv"].shape[3]
  # PyTorch layout: in_proj_weight [3W, W]; q, k, v are its three row blocks.
  in_proj = p["qkv"].reshape(w, 3 * w).T
  in_bias = p["qkv_bias"].reshape(3 * w)
  qkv = x @ in_proj.T + in_bias
  q, k, v = np.split(qkv, 3, axis=-1)
  b, t, _ = x.shape
  q, k, v = (a.reshape(b, t, h, e).transpose(0, 2, 1, 3) for a in (q, k, v))
  s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(e)
  if mask is not None:
    s = np.where(mask, s, -1e30)
  s = np.exp(s - s.max(-1, keepdims=True))
  s = s / s.sum(-1, keepdims=True)
  o = (s @ v).transpose(0, 2, 1, 3).reshape(b, t, w)
  return o @ p["out"].reshape(w, w) + p["out_bias"]


def _np_block(x, blk, mask=None):
  g = lambda m: (np.asarray(m.scale.get_value(), np.float64), np.asarray(m.bias.get_value(), np.float64))
  x = x + _np_attn(_np_ln(x, *g(blk.ln_1)), blk.attn, mask)
  h = _np_ln(x, *g(blk.ln_2))
  fc, pr = blk.mlp.c_fc, blk.mlp.c_proj
  h = _np_gelu(h @ np.asarray(fc.kernel.get_value(), np.float64) + np.asarray(fc.bias.get_value()))
  return x + h @ np.asarray(pr.kernel.get_value(), np.float64) + np.asarray(pr.bias.get_value())


def _randomize(module, seed=1, scale=0.3):
  """Gives every parameter (biases and LN too) random values so the reference checks all of them."""
  state = nnx.state(module)
  leaves, tree = jax.tree.flatten(state)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  new = [jax.random.normal(k, l.shape) * scale + (1.0 if l.ndim == 1 else 0.0) * 0
         for k, l in zip(keys, leaves)]
  nnx.update(module, jax.tree.unflatten(tree, new))


def test_block_matches_numpy_pre_ln_block():
  blk = transformer.Block(8, 2, rngs=nnx.Rngs(0))
  _randomize(blk)
  x = np.random.RandomState(0).randn(2, 5, 8)
  got = blk(jnp.asarray(x, jnp.float32))
  np.testing.assert_allclose(got, _np_block(x, blk), rtol=1e-4, atol=1e-4)


def test_block_with_mask_matches_numpy():
  blk = transformer.Block(8, 2, rngs=nnx.Rngs(0))
  _randomize(blk, seed=3)
  x = np.random.RandomState(1).randn(2, 5, 8)
  keep = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]], bool)
  mask = keep[:, None, None, :]
  got = blk(jnp.asarray(x, jnp.float32), jnp.asarray(mask))
  np.testing.assert_allclose(got, _np_block(x, blk, mask), rtol=1e-4, atol=1e-4)


def test_masked_keys_do_not_influence_kept_positions():
  attn = attention.MultiHeadAttention(8, 2, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(0), (1, 6, 8))
  mask = jnp.array([True, True, True, True, False, False])[None, None, None, :]
  full = attn(x, mask=mask)
  short = attn(x[:, :4])
  np.testing.assert_allclose(full[:, :4], short, rtol=1e-5, atol=1e-6)
  changed = attn(x.at[:, 4:].set(5.0), mask=mask)
  np.testing.assert_allclose(changed[:, :4], full[:, :4], rtol=1e-5, atol=1e-6)


def test_separate_qkv_equals_fused_with_same_weights():
  fused = attention.MultiHeadAttention(8, 2, rngs=nnx.Rngs(0))
  sep = attention.MultiHeadAttention(8, 2, fused_qkv=False, rngs=nnx.Rngs(1))
  qkv = fused.qkv.get_value()
  bias = jax.random.normal(jax.random.key(2), (3, 2, 4))
  fused.qkv_bias.set_value(bias)
  for i, name in enumerate(("query", "key", "value")):
    getattr(sep, name).set_value(qkv[:, i])
    getattr(sep, name + "_bias").set_value(bias[i])
  sep.out.set_value(fused.out.get_value())
  x = jax.random.normal(jax.random.key(1), (2, 3, 8))
  np.testing.assert_allclose(sep(x), fused(x), rtol=1e-5, atol=1e-6)


def test_bad_heads_raise():
  with pytest.raises(ValueError, match="num_heads"):
    attention.MultiHeadAttention(10, 3, rngs=nnx.Rngs(0))


def test_bf16_compute_keeps_float32_params_and_is_close():
  t32 = transformer.Transformer(16, 2, 2, rngs=nnx.Rngs(0))
  t16 = transformer.Transformer(16, 2, 2, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
  assert all(l.dtype == jnp.float32 for l in jax.tree.leaves(nnx.state(t16)))
  x = jax.random.normal(jax.random.key(0), (2, 4, 16))
  y16 = t16(x.astype(jnp.bfloat16))
  assert y16.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(y16, np.float32), t32(x), atol=0.1)


def test_remat_same_value_and_grad_under_jit():
  plain = transformer.Transformer(8, 2, 2, rngs=nnx.Rngs(0))
  remat = transformer.Transformer(8, 2, 2, remat=True, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(0), (2, 3, 8))

  def grads(model):
    g, s = nnx.split(model)
    return jax.jit(jax.grad(lambda s: jnp.sum(nnx.merge(g, s)(x)**2)))(s)

  ga, gb = grads(plain), grads(remat)
  for a, b in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert any(float(jnp.abs(a).sum()) > 0 for a in jax.tree.leaves(ga))


def test_params_carry_logical_axes():
  blk = transformer.Block(8, 2, rngs=nnx.Rngs(0))
  specs = nnx.get_partition_spec(nnx.state(blk))
  assert tuple(specs["attn"]["qkv"].get_value()) == ("embed", None, "heads", "kv")
  assert tuple(specs["mlp"]["c_fc"]["kernel"].get_value()) == ("embed", "mlp")
  assert tuple(specs["mlp"]["c_proj"]["kernel"].get_value()) == ("mlp", "embed")
