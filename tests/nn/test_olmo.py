"""nn.olmo: OLMo v1's hidden states (HF `hidden_states[1:]`) against a float64 numpy transcription of
HF's OlmoModel (written from transformers 4.57.6 `modeling_olmo.py`), and the invariants a frozen
text tower must keep: causality, left-padding invariance of the real tokens, finite pads, scan ==
unrolled; plus the shared pieces it added (Attention qkv_clip, Stack capture="all")."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtok.nn import olmo
from jaxtok.nn.attention import Attention
from jaxtok.nn.block import Block
from jaxtok.nn.stack import Stack

CFG = dict(width=32, depth=2, num_heads=4, mlp_hidden=48, vocab_size=64, rope_theta=500.0,
           clip_qkv=0.25)


@pytest.fixture(scope="module")
def tower():
  model = olmo.make_model(CFG, rngs=nnx.Rngs(0))
  params = nnx.state(model, nnx.Param)
  # Larger weights than the 0.02 init, so the clamp at 0.25 is active.
  params = jax.tree.map(lambda p: p * 10.0, params)
  return params, jax.jit(olmo.hidden_states_fn(CFG))


def _ln(x):
  return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)


def _reference(params, ids, mask, cfg=CFG):
  """HF OlmoModel + output_hidden_states, written out in float64: embeddings, L decoder layers
  (parameter-free LayerNorm, q/k/v clamp, rotate_half RoPE at arange(T), causal + padding mask as
  an additive most-negative bias, SwiGLU), hidden_states[1:] with the last one final-normed."""
  f = {".".join(map(str, k)): np.asarray(v.get_value(), np.float64)
       for k, v in nnx.to_flat_state(params)}
  b, t = ids.shape
  h, e = cfg["num_heads"], cfg["width"] // cfg["num_heads"]
  inv = cfg["rope_theta"] ** (-np.arange(0, e, 2) / e)
  ang = np.arange(t)[:, None] * inv[None]
  cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))
  rot = lambda x: x * cos + np.concatenate([-x[..., e // 2:], x[..., :e // 2]], -1) * sin
  allowed = np.tril(np.ones((t, t), bool))[None] & mask.astype(bool)[:, None, :]  # [B, T, T]
  bias = np.where(allowed, 0.0, np.finfo(np.float32).min)[:, None]
  x = f["embed"][ids]
  out = []
  for i in range(cfg["depth"]):
    p = f"layers.blocks.{i}."
    w = f[p + "attn.qkv"].reshape(cfg["width"], 3, h * e)
    a = _ln(x)
    q, k, v = (np.clip(a @ w[:, j], -cfg["clip_qkv"], cfg["clip_qkv"]).reshape(b, t, h, e)
               .transpose(0, 2, 1, 3) for j in range(3))
    s = rot(q) @ rot(k).transpose(0, 1, 3, 2) / np.sqrt(e) + bias
    s = np.exp(s - s.max(-1, keepdims=True))
    y = (s / s.sum(-1, keepdims=True)) @ v
    x = x + y.transpose(0, 2, 1, 3).reshape(b, t, h * e) @ f[p + "attn.out"].reshape(h * e, -1)
    a = _ln(x)
    g = a @ f[p + "mlp.gate.kernel"]
    x = x + (g / (1 + np.exp(-g)) * (a @ f[p + "mlp.up.kernel"])) @ f[p + "mlp.down.kernel"]
    out.append(x)
  out[-1] = _ln(out[-1])
  return np.stack(out)


IDS = np.array([[5, 17, 20, 33, 9, 7], [1, 1, 44, 12, 30, 2], [1, 1, 1, 1, 1, 1]], np.int32)
MASK = np.array([[1] * 6, [0, 0, 1, 1, 1, 1], [0] * 6], np.int32)


def test_hidden_states_equal_the_hf_transcription_everywhere(tower):
  params, fn = tower
  got = np.asarray(fn(params, jnp.asarray(IDS), jnp.asarray(MASK)))
  assert got.shape == (2, 3, 6, 32) and got.dtype == np.float32
  want = _reference(params, IDS, MASK)
  # Pads included: a query with no visible key gets uniform weights in both (HF eager's convention).
  np.testing.assert_allclose(got, want, atol=2e-4, rtol=1e-4)
  # Only the last entry is normalised (HF replaces hidden_states[-1] by last_hidden_state).
  np.testing.assert_allclose(got[-1].std(-1), 1.0, atol=1e-3)
  assert np.abs(got[0].std(-1) - 1.0).max() > 0.05


def test_the_clamp_is_active_and_matters(tower):
  params, fn = tower
  unclipped = jax.jit(olmo.hidden_states_fn(dict(CFG, clip_qkv=None)))
  a = np.asarray(fn(params, jnp.asarray(IDS), jnp.asarray(MASK)))
  b = np.asarray(unclipped(params, jnp.asarray(IDS), jnp.asarray(MASK)))
  assert np.abs(a - b).max() > 1e-2
  np.testing.assert_allclose(b, _reference(params, IDS, MASK, dict(CFG, clip_qkv=np.inf)),
                             atol=2e-4, rtol=1e-4)


def test_left_padding_leaves_the_real_tokens_unchanged_and_pads_finite(tower):
  params, fn = tower
  alone = np.asarray(fn(params, jnp.asarray(IDS[1:2, 2:]), jnp.ones((1, 4), jnp.int32)))
  padded = np.asarray(fn(params, jnp.asarray(IDS), jnp.asarray(MASK)))
  # RoPE sees positions 2..5 in the padded row, 0..3 alone: only differences matter.
  np.testing.assert_allclose(padded[:, 1, 2:], alone[:, 0], atol=1e-5)
  assert np.isfinite(padded).all()  # incl. the all-padding row


def test_causal(tower):
  params, fn = tower
  ids = IDS[:1].copy()
  ids2 = ids.copy()
  ids2[0, 4:] = [60, 61]
  a, b = (np.asarray(fn(params, jnp.asarray(x), jnp.ones((1, 6), jnp.int32))) for x in (ids, ids2))
  np.testing.assert_array_equal(a[:, :, :4], b[:, :, :4])
  assert np.abs(a[:, :, 4:] - b[:, :, 4:]).max() > 1e-3


def test_scan_layers_and_remat_match_the_unrolled_tower(tower):
  params, fn = tower
  want = np.asarray(fn(params, jnp.asarray(IDS), jnp.asarray(MASK)))
  stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), params["layers"]["blocks"][0],
                         params["layers"]["blocks"][1])
  scan_params = nnx.State({"embed": params["embed"], "layers": {"blocks": stacked}})
  got = olmo.hidden_states_fn(dict(CFG, scan_layers=True, remat="full"))(
      scan_params, jnp.asarray(IDS), jnp.asarray(MASK))
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)


def test_stack_capture_all_equals_each_capture_k():
  make = lambda r: Block(8, 2, mlp_hidden=16, rngs=r)
  x = jax.random.normal(jax.random.key(0), (2, 3, 8))
  for scan in (False, True):
    stack = Stack(2, make, scan_layers=scan, rngs=nnx.Rngs(1))
    out, every = stack(x, capture="all", causal=True)
    assert every.shape == (2, 2, 3, 8)
    np.testing.assert_allclose(np.asarray(every[-1]), np.asarray(out), atol=1e-6)
    np.testing.assert_allclose(np.asarray(every[0]),
                               np.asarray(stack(x, capture=1, causal=True)[1]), atol=1e-5)
  with pytest.raises(ValueError, match="capture must be an int in \\[1, 2\\].*or 'all'"):
    stack(x, capture="some")


def test_attention_qkv_clip_clamps_the_projections():
  attn = Attention(8, 2, qkv_bias=True, qkv_clip=0.1, rngs=nnx.Rngs(0))
  x = 10 * jax.random.normal(jax.random.key(1), (1, 3, 8))
  q, k, v = attn.project(x)
  raw = jnp.einsum("btw,wche->btche", x, attn.qkv.get_value()) + attn.qkv_bias.get_value()
  for i, got in enumerate((q, k, v)):
    np.testing.assert_allclose(np.asarray(got), np.clip(np.asarray(raw[:, :, i]), -0.1, 0.1),
                               atol=1e-6)
  assert float(jnp.abs(raw).max()) > 0.1
  with pytest.raises(ValueError, match="qkv_clip must be None or a number > 0, got -1"):
    Attention(8, 2, qkv_clip=-1, rngs=nnx.Rngs(0))


def test_release_size_and_config_checks():
  shapes = jax.tree.map(lambda p: p.shape, olmo.abstract_params(dict(size="amd-olmo-1b")))
  leaves = jax.tree.leaves(shapes, is_leaf=lambda s: isinstance(s, tuple))
  # 50304 x 2048 embeddings + 16 x (4 x 2048^2 + 3 x 2048 x 8192): AMD-OLMo-1B without lm_head.
  assert sum(int(np.prod(s)) for s in leaves) == 50304 * 2048 + 16 * (4 * 2048**2 + 3 * 2048 * 8192)
  with pytest.raises(ValueError, match=r"unknown Olmo config key\(s\) \['heads'\]"):
    olmo.make_model(dict(CFG, heads=4), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="'clip_qkv' must be float"):
    olmo.make_model(dict(CFG, clip_qkv="no"), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="OLMo size must be one of \\['amd-olmo-1b'\\]"):
    olmo.make_model(dict(size="olmo-7b"), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="even dim"):
    olmo.make_model(dict(CFG, width=12, num_heads=4), rngs=nnx.Rngs(0))


def test_bad_inputs_are_refused(tower):
  params, _ = tower
  model = nnx.merge(nnx.graphdef(olmo.make_model(CFG, rngs=nnx.Rngs(0))), params)
  with pytest.raises(ValueError, match="ids must be int \\[B, T\\], got float32"):
    model(jnp.zeros((1, 3), jnp.float32))
  with pytest.raises(ValueError, match=r"mask must be \[B, T\] = \(1, 3\) like ids, got \(1, 4\)"):
    model(jnp.zeros((1, 3), jnp.int32), jnp.ones((1, 4), jnp.int32))
