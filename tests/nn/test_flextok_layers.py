"""Tests of FlexTok's transformer pieces against hand formulas and the release's definitions."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtok.nn import flextok_layers as L


def _jit(module, method="__call__"):
  graphdef, state = nnx.split(module)
  f = jax.jit(lambda s, *a: getattr(nnx.merge(graphdef, s), method)(*a), static_argnums=())
  return lambda *a: f(state, *a)


def _w(linear):
  return np.asarray(linear.kernel.get_value())


def test_layer_norm_no_affine_float32():
  x = jax.random.normal(jax.random.key(0), (3, 16)) * 5 + 2
  y = np.asarray(L.layer_norm(x))
  xn = np.asarray(x, np.float64)
  ref = (xn - xn.mean(-1, keepdims=True)) / np.sqrt(xn.var(-1, keepdims=True) + 1e-5)
  np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
  assert L.layer_norm(x.astype(jnp.bfloat16)).dtype == jnp.bfloat16


def test_swiglu_hidden_and_formula():
  assert L.swiglu_hidden(1152, 4.0) == 3072  # d18 width
  assert L.swiglu_hidden(1792, 4.0) == 4778  # d28 width: int(2 * 7168 / 3)
  mlp = L.SwiGLU(8, 12, rngs=nnx.Rngs(0))
  x = np.asarray(jax.random.normal(jax.random.key(1), (2, 3, 8)), np.float64)
  h1, h3 = x @ _w(mlp.fc1), x @ _w(mlp.fc3)
  ref = (h1 / (1 + np.exp(-h1)) * h3) @ _w(mlp.fc2)
  np.testing.assert_allclose(mlp(jnp.asarray(x, jnp.float32)), ref, rtol=1e-4, atol=1e-5)
  assert not any("bias" in str(p) for p in jax.tree_util.tree_leaves_with_path(nnx.state(mlp)))


def _ln(x):
  return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)


def test_attention_matches_hand_computation_with_mup_scale_and_qk_norm():
  width, head_dim = 32, 16  # scale 8/16 = 0.5, not 1/sqrt(16) = 0.25
  attn = L.Attention(width, head_dim, rngs=nnx.Rngs(2))
  assert attn.scale == 0.5
  x = np.asarray(jax.random.normal(jax.random.key(3), (2, 5, width)), np.float64)
  mask = np.tril(np.ones((5, 5), bool))
  q = _ln((x @ _w(attn.wq)).reshape(2, 5, 2, head_dim))
  k = _ln((x @ _w(attn.wk)).reshape(2, 5, 2, head_dim))
  v = (x @ _w(attn.wv)).reshape(2, 5, 2, head_dim)
  s = np.einsum("bthe,bshe->bhts", q, k) * 0.5
  s = np.where(mask, s, -np.inf)
  p = np.exp(s - s.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  ref = np.einsum("bhts,bshe->bthe", p, v).reshape(2, 5, width) @ _w(attn.proj)
  got = _jit(attn)(jnp.asarray(x, jnp.float32), jnp.asarray(mask))
  np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
  names = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(nnx.state(attn))]
  assert not any("bias" in n for n in names)


def test_register_mask_equals_definition():
  n, k = 4, 3
  mask = np.asarray(L.register_mask(n, k))
  for q in range(n + k):
    for kv in range(n + k):
      if q < n:
        want = kv < n  # patches see only patches
      else:
        want = kv < n or kv <= q  # register i sees patches and registers j <= i
      assert mask[q, kv] == want, (q, kv)


def test_block_stack_prefix_of_registers_ignores_later_registers():
  n, k, width = 4, 5, 32
  blocks = [L.Block(width, 16, rngs=nnx.Rngs(i)) for i in range(2)]
  mask = L.register_mask(n, k)

  @jax.jit
  def run(x):
    for b in blocks:
      x = b(x, mask)
    return x

  x = jax.random.normal(jax.random.key(4), (2, n + k, width))
  y = x.at[:, n + 3:].add(jax.random.normal(jax.random.key(5), (2, k - 3, width)))
  a, b = run(x), run(y)
  np.testing.assert_allclose(a[:, :n + 3], b[:, :n + 3], atol=1e-5)
  assert float(jnp.abs(a[:, n + 3:] - b[:, n + 3:]).max()) > 1e-3
  # Without the mask the prefix would change (the test can fail).
  full = jax.jit(lambda x: blocks[1](blocks[0](x)))
  assert float(jnp.abs(full(x)[:, :n] - full(y)[:, :n]).max()) > 1e-4


def test_sincos_2d_matches_release_construction():
  # The release: meshgrid(arange(w), arange(h), indexing="ij"), outer products with omega, concat
  # [sin(w), cos(w), sin(h), cos(h)], then read as "(h w)". Rebuilt here in numpy for a square table.
  s, dim = 5, 16
  gw, gh = np.meshgrid(np.arange(s, dtype=np.float32), np.arange(s, dtype=np.float32), indexing="ij")
  omega = 1.0 / 10000.0 ** (np.arange(dim // 4, dtype=np.float32) / (dim // 4))
  ow, oh = gw.reshape(-1)[:, None] * omega, gh.reshape(-1)[:, None] * omega
  ref = np.concatenate([np.sin(ow), np.cos(ow), np.sin(oh), np.cos(oh)], axis=1).reshape(s, s, dim)
  got = np.asarray(L.sincos_2d(s, s, dim))
  np.testing.assert_allclose(got, ref, atol=1e-5)
  # Channel 0 is sin(row) (omega_0 = 1), channel dim/2 is sin(col).
  np.testing.assert_allclose(got[3, 1, 0], np.sin(3.0), atol=1e-6)
  np.testing.assert_allclose(got[3, 1, dim // 2], np.sin(1.0), atol=1e-6)
  # Cropping a larger table gives the smaller one (the release crops its max-size table).
  np.testing.assert_allclose(L.sincos_2d(8, 8, dim)[:3, :4], L.sincos_2d(3, 4, dim), atol=1e-6)


def test_timestep_frequencies_hand_values():
  t = jnp.array([0.0, 0.5])
  f = np.asarray(L.timestep_frequencies(t, 8, max_timestep=1.0))
  freqs = 1000.0 * np.exp(-np.log(256.0) * np.arange(4) / 4)
  np.testing.assert_allclose(f[0], [1, 1, 1, 1, 0, 0, 0, 0], atol=1e-6)
  np.testing.assert_allclose(f[1], np.concatenate([np.cos(0.5 * freqs), np.sin(0.5 * freqs)]),
                             atol=2e-4)
  assert L.timestep_frequencies(t, 7).shape == (2, 7)
  emb = L.TimestepEmbedder(16, freq_dim=8, rngs=nnx.Rngs(0))
  assert emb(t).shape == (2, 16)


def test_adaln_block_zero_init_identity_and_per_segment_chunk_order():
  width, segs = 16, (3, 2)
  block = L.AdaLNBlock(width, 8, expansion=2, rngs=nnx.Rngs(6))
  x = jax.random.normal(jax.random.key(7), (2, 5, width))
  cond = jax.random.normal(jax.random.key(8), (2, width))
  np.testing.assert_allclose(block(x, cond, segs), x, atol=1e-6)  # adaLN-zero: identity at init
  # Bias only in segment 1's second chunk (gate_mlp): segment 0 stays the identity, segment 1 gets
  # exactly x + mlp(ln(x)) (attention gated off, no shift/scale).
  bias = np.zeros((2, 6, width), np.float32)
  bias[1, 1] = 1.0
  block.ada.bias.set_value(jnp.asarray(bias.reshape(-1)))
  out = block(x, cond, segs)
  np.testing.assert_allclose(out[:, :3], x[:, :3], atol=1e-6)
  np.testing.assert_allclose(out[:, 3:], x[:, 3:] + block.mlp(L.layer_norm(x[:, 3:])), atol=1e-5)
  # Bias in segment 0's fourth chunk (scale_msa) with gate_msa 1: modulated attention input.
  bias = np.zeros((2, 6, width), np.float32)
  bias[0, 0], bias[0, 3] = 1.0, 0.5
  block.ada.bias.set_value(jnp.asarray(bias.reshape(-1)))
  out = block(x, cond, segs)
  h = L.layer_norm(x)
  h = jnp.concatenate([h[:, :3] * 1.5, h[:, 3:]], axis=1)
  want0 = x + jnp.concatenate([jnp.ones((2, 3, 1)), jnp.zeros((2, 2, 1))], 1) * block.attn(h)
  np.testing.assert_allclose(out, want0, atol=1e-5)


def test_adaln_block_jit_grad():
  block = L.AdaLNBlock(16, 8, expansion=2, rngs=nnx.Rngs(9))
  block.ada.kernel.set_value(0.1 * jax.random.normal(jax.random.key(0), block.ada.kernel.shape))
  graphdef, state = nnx.split(block)
  x = jax.random.normal(jax.random.key(1), (2, 5, 16))
  cond = jax.random.normal(jax.random.key(2), (2, 16))

  def loss(state, x, cond):
    return jnp.sum(nnx.merge(graphdef, state)(x, cond, (3, 2)) ** 2)

  g = jax.jit(jax.grad(loss))(state, x, cond)
  assert float(jnp.abs(g["ada"]["kernel"].get_value()).sum()) > 0
  assert float(jnp.abs(g["attn"]["wq"]["kernel"].get_value()).sum()) > 0


def test_errors():
  with pytest.raises(ValueError, match="head_dim"):
    L.Attention(30, 16, rngs=nnx.Rngs(0))
  block = L.AdaLNBlock(16, 8, expansion=2, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="segments"):
    block(jnp.zeros((1, 5, 16)), jnp.zeros((1, 16)), (2, 2))
  with pytest.raises(ValueError, match="dim"):
    L.sincos_2d(2, 2, 6)
