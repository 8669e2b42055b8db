"""The Block against hand-written numpy (open_clip pre-LN, BERT post-LN), masks, AdaLN, dtypes, axes."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtok.nn.block import Block


def _np_ln(x, p, eps=1e-5):
  mu = x.mean(-1, keepdims=True)
  y = (x - mu) / np.sqrt(((x - mu)**2).mean(-1, keepdims=True) + eps)
  return y * p["scale"] + p["bias"]


def _np_attn(x, p, mask=None):
  """PyTorch nn.MultiheadAttention semantics from in_proj [3W, W] = qkv [W, 3, H, E] reshaped."""
  w, h, e = p["qkv"].shape[0], p["qkv"].shape[2], p["qkv"].shape[3]
  qkv = x @ p["qkv"].reshape(w, 3 * w) + p["qkv_bias"].reshape(3 * w)
  b, t, _ = x.shape
  q, k, v = (a.reshape(b, t, h, e).transpose(0, 2, 1, 3) for a in np.split(qkv, 3, axis=-1))
  s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(e)
  if mask is not None:
    s = np.where(mask, s, -1e30)
  s = np.exp(s - s.max(-1, keepdims=True))
  o = ((s / s.sum(-1, keepdims=True)) @ v).transpose(0, 2, 1, 3).reshape(b, t, w)
  return o @ p["out"].reshape(w, w) + p["out_bias"]


def _np_mlp(x, p):
  erf = np.vectorize(math.erf)
  h = x @ p["up"]["kernel"] + p["up"]["bias"]
  return (0.5 * h * (1 + erf(h / np.sqrt(2)))) @ p["down"]["kernel"] + p["down"]["bias"]


def _np_block(x, p, mask=None, post=False):
  if post:
    x = _np_ln(x + _np_attn(x, p["attn"], mask), p["norm1"], 1e-12)
    return _np_ln(x + _np_mlp(x, p["mlp"]), p["norm2"], 1e-12)
  x = x + _np_attn(_np_ln(x, p["norm1"]), p["attn"], mask)
  return x + _np_mlp(_np_ln(x, p["norm2"]), p["mlp"])


def _randomize(module, seed=1):
  """Random values for every parameter (biases and norms too) so the reference checks all of them."""
  state = nnx.state(module)
  leaves, tree = jax.tree.flatten(state)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  nnx.update(module, jax.tree.unflatten(tree, [jax.random.normal(k, l.shape) * 0.3
                                               for k, l in zip(keys, leaves)]))
  return jax.tree.map(lambda a: np.asarray(a, np.float64), nnx.to_pure_dict(nnx.state(module)))


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("post", [False, True])
def test_block_matches_numpy(masked, post):
  blk = Block(8, 2, mlp_hidden=32, post_norm=post, norm_eps=1e-12 if post else 1e-5, rngs=nnx.Rngs(0))
  p = _randomize(blk, seed=3 if masked else 1)
  x = np.random.RandomState(0).randn(2, 5, 8)
  keep = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]], bool)[:, None, None, :] if masked else None
  got = blk(jnp.asarray(x, jnp.float32), mask=None if keep is None else jnp.asarray(keep))
  np.testing.assert_allclose(got, _np_block(x, p, keep, post), rtol=1e-4, atol=1e-4)


def test_layerscale_scales_each_branch_before_the_residual():
  """DINOv2's LayerScale: x + ls1 * attn(norm1(x)), then + ls2 * mlp(norm2(x)); ls initialised to the value."""
  blk = Block(8, 2, mlp_hidden=32, layerscale=1e-5, rngs=nnx.Rngs(0))
  np.testing.assert_array_equal(np.asarray(blk.ls1.get_value()), np.full(8, 1e-5, np.float32))
  p = _randomize(blk, seed=5)
  x = np.random.RandomState(1).randn(2, 5, 8)
  h = x + p["ls1"] * _np_attn(_np_ln(x, p["norm1"]), p["attn"])
  want = h + p["ls2"] * _np_mlp(_np_ln(h, p["norm2"]), p["mlp"])
  np.testing.assert_allclose(blk(jnp.asarray(x, jnp.float32)), want, rtol=1e-4, atol=1e-4)
  with pytest.raises(ValueError, match="layerscale=1.0"):
    Block(8, 2, mlp_hidden=32, layerscale=1.0, post_norm=True, rngs=nnx.Rngs(0))


def test_adaln_block_is_identity_at_init_and_modulates_per_segment():
  blk = Block(8, 2, mlp_hidden=16, norm_affine=False, adaln=True, cond_dim=4, ada_segments=2,
              rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(0), (2, 5, 8))
  cond = jax.random.normal(jax.random.key(1), (2, 4))
  np.testing.assert_array_equal(blk(x, cond=cond, segments=(3, 2)), x)  # adaLN-zero
  _randomize(blk)
  mods = blk.modulation(cond, (3, 2), 5)
  assert len(mods) == 6 and mods[0].shape == (2, 5, 8)
  np.testing.assert_array_equal(mods[0][:, 0], mods[0][:, 2])  # one modulation per segment
  assert not np.allclose(mods[0][:, 2], mods[0][:, 3])
  # The order is FlexTok's: gate_msa, gate_mlp, shift_msa, scale_msa, shift_mlp, scale_mlp.
  full = blk.ada(jax.nn.silu(cond)).reshape(2, 2, 6, 8)
  np.testing.assert_allclose(mods[1][:, 4], full[:, 1, 1], rtol=1e-6)
  with pytest.raises(ValueError, match="segments must be 2 lengths"):
    blk(x, cond=cond)
  with pytest.raises(ValueError, match="needs cond"):
    blk(x)


def test_adaln_condition_per_position_and_full_qk_layernorm():
  """cond [B, T, C] modulates each position through the same Dense (RAR): equal conditions give
  the [B, C] result, and one position's condition changes that position only (before attention
  mixes it). qk_norm_affine + qk_norm_bias give the QK LayerNorm a scale and a bias."""
  blk = Block(8, 2, mlp_hidden=16, adaln=True, qk_norm="layer", qk_norm_affine=True,
              qk_norm_bias=True, qk_norm_eps=1e-6, rngs=nnx.Rngs(0))
  assert blk.attn.q_norm.bias.shape == (4,) and blk.attn.k_norm.eps == 1e-6
  _randomize(blk)
  x = jax.random.normal(jax.random.key(0), (2, 5, 8))
  cond = jax.random.normal(jax.random.key(1), (2, 8))
  per_pos = jnp.broadcast_to(cond[:, None], (2, 5, 8))
  np.testing.assert_allclose(blk(x, cond=per_pos, causal=True), blk(x, cond=cond, causal=True),
                             atol=1e-6)
  moved = blk(x, cond=per_pos.at[:, 3].add(1.0), causal=True)
  base = blk(x, cond=per_pos, causal=True)
  np.testing.assert_allclose(moved[:, :3], base[:, :3], atol=1e-6)  # causal: later cond unseen
  assert float(jnp.abs(moved[:, 3] - base[:, 3]).min()) > 0
  with pytest.raises(ValueError, match=r"cond \[B, T, C\] needs T = the sequence length 5"):
    blk(x, cond=per_pos[:, :4])


def test_bf16_compute_keeps_float32_params_and_is_close():
  b32 = Block(16, 2, mlp_hidden=64, rngs=nnx.Rngs(0))
  b16 = Block(16, 2, mlp_hidden=64, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
  assert all(l.dtype == jnp.float32 for l in jax.tree.leaves(nnx.state(b16)))
  x = jax.random.normal(jax.random.key(0), (2, 4, 16))
  y16 = b16(x.astype(jnp.bfloat16))
  assert y16.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(y16, np.float32), b32(x), atol=0.1)


def test_params_carry_logical_axes():
  blk = Block(8, 2, mlp_hidden=32, mlp="swiglu", adaln=True, rngs=nnx.Rngs(0))
  specs = nnx.get_partition_spec(nnx.state(blk))
  assert tuple(specs["attn"]["qkv"].get_value()) == ("embed", None, "heads", "kv")
  assert tuple(specs["mlp"]["gate"]["kernel"].get_value()) == ("embed", "mlp")
  assert tuple(specs["mlp"]["up"]["kernel"].get_value()) == ("embed", "mlp")
  assert tuple(specs["mlp"]["down"]["kernel"].get_value()) == ("mlp", "embed")
  assert tuple(specs["ada"]["kernel"].get_value()) == ("embed", "mlp")
  assert tuple(specs["norm1"]["scale"].get_value()) == ("embed",)


def test_adaln_chunks_act_on_the_output_per_segment():
  """FlexTok's chunk semantics on the block output (moved from tests/nn/test_flextok_layers.py)."""
  width, segs = 16, (3, 2)
  block = Block(width, 2, mlp_hidden=32, mlp="swiglu", mlp_bias=False, norm_affine=False,
                adaln=True, ada_segments=2, qkv_bias=False, out_bias=False, qk_norm="layer",
                rngs=nnx.Rngs(6))
  x = jax.random.normal(jax.random.key(7), (2, 5, width))
  cond = jax.random.normal(jax.random.key(8), (2, width))
  run = lambda: block(x, cond=cond, segments=segs)
  ln = lambda h: block.norm1(h)
  # Bias only in segment 1's second chunk (gate_mlp): segment 0 stays the identity, segment 1 gets
  # exactly x + mlp(ln(x)) (attention gated off, no shift/scale).
  bias = np.zeros((2, 6, width), np.float32)
  bias[1, 1] = 1.0
  block.ada.bias.set_value(jnp.asarray(bias.reshape(-1)))
  out = run()
  np.testing.assert_allclose(out[:, :3], x[:, :3], atol=1e-6)
  np.testing.assert_allclose(out[:, 3:], x[:, 3:] + block.mlp(ln(x[:, 3:])), atol=1e-5)
  # Bias in segment 0's fourth chunk (scale_msa) with gate_msa 1: modulated attention input.
  bias = np.zeros((2, 6, width), np.float32)
  bias[0, 0], bias[0, 3] = 1.0, 0.5
  block.ada.bias.set_value(jnp.asarray(bias.reshape(-1)))
  h = ln(x)
  h = jnp.concatenate([h[:, :3] * 1.5, h[:, 3:]], axis=1)
  want = x + jnp.concatenate([jnp.ones((2, 3, 1)), jnp.zeros((2, 2, 1))], 1) * block.attn(h)
  np.testing.assert_allclose(run(), want, atol=1e-5)
  # jit + grad reach the modulation and the attention.
  block.ada.kernel.set_value(0.1 * jax.random.normal(jax.random.key(0), block.ada.kernel.shape))
  graphdef, state = nnx.split(block)
  loss = lambda s: jnp.sum(nnx.merge(graphdef, s)(x, cond=cond, segments=segs) ** 2)
  g = jax.jit(jax.grad(loss))(state)
  assert float(jnp.abs(g["ada"]["kernel"].get_value()).sum()) > 0
  assert float(jnp.abs(g["attn"]["qkv"].get_value()).sum()) > 0


def test_with_cache_length_cuts_and_pads_only_self_attention_slots():
  """Every self-attention KVCache (also a scanned [L, B, H, S, E] one and a CrossCache's self_kv)
  is cut to, or zero-padded up to, the requested slots; a CrossCache's context keys and other
  leaves (even one whose axis -2 has the same size) are untouched."""
  from jaxtok.nn.attention import KVCache
  from jaxtok.nn.block import CrossCache, self_cache_length, with_cache_length
  r = lambda *s: jax.random.normal(jax.random.key(len(s) + s[-2]), s)
  tree = {"kv": (KVCache(r(2, 3, 5, 4), r(2, 3, 5, 4)),
                 CrossCache(KVCache(r(2, 3, 5, 4), r(2, 3, 5, 4)), KVCache(r(2, 3, 7, 4), r(2, 3, 7, 4)))),
          "scanned": KVCache(r(6, 2, 3, 5, 4), r(6, 2, 3, 5, 4)), "cond": r(2, 5, 4)}
  for length in (3, 5, 8):
    got = with_cache_length(tree, length)
    for old, new in ((tree["kv"][0], got["kv"][0]), (tree["kv"][1].self_kv, got["kv"][1].self_kv),
                     (tree["scanned"], got["scanned"])):
      for a, b in zip(old, new):
        assert b.shape == a.shape[:-2] + (length, a.shape[-1])
        keep = min(length, a.shape[-2])
        np.testing.assert_array_equal(b[..., :keep, :], a[..., :keep, :])
        np.testing.assert_array_equal(b[..., keep:, :], 0)
    np.testing.assert_array_equal(got["kv"][1].context.k, tree["kv"][1].context.k)
    np.testing.assert_array_equal(got["cond"], tree["cond"])
    assert self_cache_length(got) == length  # the context's 7 slots do not count
  assert self_cache_length({"cond": tree["cond"]}) is None


def test_precomputed_modulation_equals_the_condition_path():
  """Block.extend(modulation=block.modulation(cond, ...)) is the cond path exactly; a block
  without AdaLN refuses it."""
  from jaxtok.nn.block import Block as B
  block = B(16, 2, mlp_hidden=32, adaln=True, rngs=nnx.Rngs(0))
  block.ada.kernel.set_value(jax.random.normal(jax.random.key(3), block.ada.kernel.get_value().shape))
  x = jax.random.normal(jax.random.key(1), (2, 3, 16))
  cond = jax.random.normal(jax.random.key(2), (2, 3, 16))
  cache = block.init_cache(2, 5)
  want, want_cache = block.extend(x, cache, 0, cond=cond)
  got, got_cache = block.extend(x, cache, 0, modulation=block.modulation(cond, None, 3))
  np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(got_cache.k, want_cache.k)
  plain = B(16, 2, mlp_hidden=32, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="modulation needs an AdaLN block"):
    plain.extend(x, plain.init_cache(2, 5), 0, modulation=block.modulation(cond, None, 3))
