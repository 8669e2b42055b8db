"""The one Attention: every kernel available here equals a float64 einsum reference for every mask
kind, in float32 and bfloat16, with and without the KV cache; qk-norm; cuDNN fallback.

Tolerances (absolute, on outputs of size ~1): float32 1e-5 (the kernels accumulate in float32; the
reference is float64 on the same inputs). bfloat16 3e-2: the reference takes the bf16-rounded q, k,
v, but the kernels round the softmax weights to bf16 before the weighted sum and return bf16 (8-bit
mantissa: relative error 2^-8 per rounding, a few roundings deep).
"""
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtok.nn import attention, rope

HAS_GPU = jax.default_backend() == "gpu"
IMPLS = [None, "xla", pytest.param("cudnn", marks=pytest.mark.skipif(
    not HAS_GPU, reason="cudnn needs an NVIDIA GPU (CPU only here: its fallback is tested below)"))]
MASKS = ("none", "causal", "bool", "additive")
TOL = {jnp.float32: 1e-5, jnp.bfloat16: 3e-2}
B, T, H, E = 2, 6, 2, 8


def _reference(q, k, v, mask=None, bias=None, scale=None):
  """softmax(q k^T * scale + bias, masked) v in float64 numpy; q [B,T,H,E], k/v [B,S,H,E]."""
  q, k, v = (np.asarray(jnp.asarray(a, jnp.float32), np.float64) for a in (q, k, v))
  s = np.einsum("bthe,bshe->bhts", q, k) * (scale if scale is not None else q.shape[-1]**-0.5)
  if bias is not None:
    s = s + np.asarray(bias, np.float64)
  if mask is not None:
    s = np.where(np.asarray(mask), s, -1e30)
  p = np.exp(s - s.max(-1, keepdims=True))
  return np.einsum("bhts,bshe->bthe", p / p.sum(-1, keepdims=True), v)


def _mask(kind, t=T, s=T):
  """(mask for attend, causal flag, reference mask, reference bias) of a mask kind."""
  rng = np.random.RandomState(0)
  if kind == "none":
    return None, False, None, None
  if kind == "causal":
    return None, True, np.tril(np.ones((t, s), bool)), None
  if kind == "bool":
    m = rng.rand(B, 1, t, s) < 0.6
    m[..., 0] = True  # every query keeps a key
    return jnp.asarray(m), False, m, None
  bias = rng.randn(B, H, t, s).astype(np.float32)
  return jnp.asarray(bias), False, None, bias


def _qkv(dtype, t=T, s=T, seed=0):
  keys = jax.random.split(jax.random.key(seed), 3)
  return (jax.random.normal(keys[0], (B, t, H, E)).astype(dtype),
          jax.random.normal(keys[1], (B, s, H, E)).astype(dtype),
          jax.random.normal(keys[2], (B, s, H, E)).astype(dtype))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("kind", MASKS)
@pytest.mark.parametrize("impl", IMPLS)
def test_attend_equals_einsum_reference(impl, kind, dtype):
  q, k, v = _qkv(dtype)
  mask, causal, ref_mask, ref_bias = _mask(kind)
  got = jax.jit(lambda q, k, v, m: attention.attend(q, k, v, mask=m, causal=causal,
                                                    implementation=impl))(q, k, v, mask)
  assert got.dtype == dtype and got.shape == (B, T, H, E)
  want = _reference(q, k, v, ref_mask, ref_bias)
  np.testing.assert_allclose(np.asarray(got, np.float64), want, atol=TOL[dtype], rtol=0)


@pytest.mark.parametrize("kind", MASKS)
def test_attend_scale_and_broadcast_masks(kind):
  q, k, v = _qkv(jnp.float32, t=3, s=5)
  mask, _, ref_mask, ref_bias = _mask("bool" if kind == "causal" else kind, t=3, s=5)
  if mask is not None:  # the lowest-rank forms: [T, S] for a bool mask, [H, T, S] for a bias
    mask = mask[0, 0] if mask.dtype == jnp.bool_ else mask[0]
    ref_mask = None if ref_mask is None else ref_mask[:1, :1]
    ref_bias = None if ref_bias is None else ref_bias[:1]
  got = attention.attend(q, k, v, mask=mask, scale=0.3)
  np.testing.assert_allclose(got, _reference(q, k, v, ref_mask, ref_bias, 0.3), atol=1e-5)


def _attn_reference(attn, x, mask=None, causal=False, positions=None):
  """The module's attention recomputed from its parameters with the float64 reference."""
  p = {k: np.asarray(v.get_value(), np.float64) for k, v in nnx.state(attn).items()}
  x64 = np.asarray(x, np.float64)
  qkv = np.einsum("btw,wche->btche", x64, p["qkv"]) + p.get("qkv_bias", 0)
  q, k, v = (qkv[:, :, i] for i in range(3))
  if attn.q_norm is not None:
    ln = lambda a: (a - a.mean(-1, keepdims=True)) / np.sqrt(a.var(-1, keepdims=True) + 1e-5)
    q, k = ln(q), ln(k)
  if attn.rope is not None:
    pos = jnp.arange(x.shape[1]) if positions is None else positions
    q, k = (np.asarray(rope.apply(jnp.asarray(a, jnp.float32), pos, attn.rope), np.float64) for a in (q, k))
  m = np.tril(np.ones((x.shape[1],) * 2, bool)) if causal else mask
  y = _reference(q, k, v, m)
  return np.einsum("bthe,hew->btw", y, p["out"]) + p.get("out_bias", 0)


@pytest.mark.parametrize("options", [dict(), dict(qk_norm="layer"), dict(rope="1d", qkv_bias=False),
                                     dict(rope="2d", out_bias=False)])
def test_module_equals_reference(options):
  attn = attention.Attention(16, 2, rngs=nnx.Rngs(0), **options)
  attn.qkv_bias is None or attn.qkv_bias.set_value(jax.random.normal(jax.random.key(5), (3, 2, 8)))
  x = jax.random.normal(jax.random.key(1), (2, 4, 16))
  positions = rope.grid_positions(2, 2) if options.get("rope") == "2d" else None
  got = attn(x, causal=True, positions=positions)
  np.testing.assert_allclose(got, _attn_reference(attn, x, causal=True, positions=positions),
                             atol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("impl", IMPLS)
def test_kv_cache_prefill_then_extend_equals_causal_recompute(impl, dtype):
  attn = attention.Attention(16, 2, rope="1d", qk_norm="rms", implementation=impl, dtype=dtype,
                             rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(2), (2, 7, 16)).astype(dtype)
  full = attn(x, causal=True)
  graphdef, state = nnx.split(attn)

  @jax.jit
  def run(state, x):
    m = nnx.merge(graphdef, state)
    first, cache = m.extend(x[:, :3], m.init_cache(2, 7), 0)  # prefill a 3-token prompt

    def body(cache, i):
      y, cache = m.extend(jax.lax.dynamic_slice_in_dim(x, i, 1, axis=1), cache, i)
      return cache, y[:, 0]
    _, rest = jax.lax.scan(body, cache, jnp.arange(3, 7))
    return jnp.concatenate([first, rest.transpose(1, 0, 2)], axis=1)

  got = run(state, x)
  assert got.dtype == dtype
  np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(full, np.float32),
                             atol=TOL[dtype] * (1 if dtype == jnp.float32 else 2))


@pytest.mark.parametrize("kind", ("bool", "additive"))
def test_kv_cache_with_a_mask_equals_masked_recompute(kind):
  attn = attention.Attention(16, 2, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(3), (2, 6, 16))
  mask, _, _, _ = _mask(kind)
  causal = np.tril(np.ones((T, T), bool))
  full = attn(x, mask=mask & causal if kind == "bool" else jnp.where(causal, mask, -1e30))
  y, cache = attn.extend(x[:, :4], attn.init_cache(2, 6), 0, mask=mask[:, :, :4])
  y2, _ = attn.extend(x[:, 4:], cache, 4, mask=mask[:, :, 4:])
  np.testing.assert_allclose(jnp.concatenate([y, y2], 1), full, atol=1e-5)


def test_kv_cache_without_the_causal_rule_follows_the_block_mask():
  """extend(causal=False): a block of queries that see each other (NAR's diagonals) gives the full
  recompute under the same block mask; the mask must be boolean and given."""
  attn = attention.Attention(16, 2, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(4), (2, 6, 16))
  group = np.array([0, 1, 1, 2, 2, 2])          # slot -> block; a query sees blocks <= its own
  mask = group[None, :] <= group[:, None]       # [T, S]
  full = attn(x, mask=mask)
  cache, outs = attn.init_cache(2, 6), []
  for lo, hi in ((0, 1), (1, 3), (3, 6)):
    y, cache = attn.extend(x[:, lo:hi], cache, lo, mask=mask[lo:hi], causal=False)
    outs.append(y)
  np.testing.assert_allclose(jnp.concatenate(outs, 1), full, atol=1e-5)
  with pytest.raises(ValueError, match="causal=False\\) needs a boolean mask over the cache slots, got float32"):
    attn.extend(x[:, :1], attn.init_cache(2, 6), 0, mask=jnp.zeros((1, 6)), causal=False)


def test_masked_keys_do_not_influence_kept_positions():
  attn = attention.Attention(8, 2, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(0), (1, 6, 8))
  keep = jnp.array([True, True, True, True, False, False])[None, None, None, :]
  full = attn(x, mask=keep)
  np.testing.assert_allclose(full[:, :4], attn(x[:, :4]), rtol=1e-5, atol=1e-6)
  changed = attn(x.at[:, 4:].set(5.0), mask=keep)
  np.testing.assert_allclose(changed[:, :4], full[:, :4], rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(HAS_GPU, reason="checks the no-GPU fallback")
def test_cudnn_falls_back_to_xla_and_logs_the_reason_once(caplog):
  q, k, v = _qkv(jnp.bfloat16)
  attention._LOGGED.clear()
  with caplog.at_level(logging.WARNING, logger="jaxtok.nn.attention"):
    got = attention.attend(q, k, v, causal=True, implementation="cudnn")
    attention.attend(q, k, v, causal=True, implementation="cudnn")
  np.testing.assert_array_equal(got, attention.attend(q, k, v, causal=True, implementation="xla"))
  refusals = [r for r in caplog.records if "cudnn refused" in r.getMessage()]
  assert len(refusals) == 1 and "no GPU" in refusals[0].getMessage()


def test_params_layout_and_bad_arguments():
  attn = attention.Attention(8, 2, qk_norm="rms", qk_norm_affine=True, rngs=nnx.Rngs(0))
  specs = nnx.get_partition_spec(nnx.state(attn))
  assert tuple(specs["qkv"].get_value()) == ("embed", None, "heads", "kv")
  assert tuple(specs["out"].get_value()) == ("heads", "kv", "embed")
  assert attn.q_norm.scale.get_value().shape == (4,)
  with pytest.raises(ValueError, match="num_heads"):
    attention.Attention(10, 3, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="implementation must be one of"):
    attention.Attention(8, 2, implementation="flash", rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="rope must be one of"):
    attention.Attention(8, 2, rope="3d", rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="2D RoPE needs positions"):
    attention.Attention(8, 2, rope="2d", rngs=nnx.Rngs(0))(jnp.zeros((1, 4, 8)))
