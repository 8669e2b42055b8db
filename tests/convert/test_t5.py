"""Parity of converted Hugging Face T5 encoders with a numpy reference forward.

The fixture is a tiny random state dict in the HF `T5ForConditionalGeneration` layout (encoder and
a decoder tensor that must be ignored, the tied `encoder.embed_tokens` copy, q/k/v/o [out, in]
without biases, relative_attention_bias on block 0 only, gated-gelu wi_0/wi_1/wo; a v1.0 relu wi/wo
file is refused).
`_reference` computes transformers' T5 encoder on those arrays directly (RMS T5LayerNorm, unscaled
scores + block 0's bucketed bias in every block, padding mask), with its own copy of the bucket
formula written from `T5Attention._relative_position_bucket`.
"""
import math

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtok.convert import t5 as C
from jaxtok.nn import t5 as T

V, W, L, H, E, F, NB, MD = 40, 24, 2, 3, 6, 32, 8, 20


def _fixture(gated=True, seed=0):
  rng = np.random.default_rng(seed)
  r = lambda *s: (rng.standard_normal(s) * 0.3).astype(np.float32)
  flat = {"shared.weight": r(V, W), "encoder.final_layer_norm.weight": 1 + r(W),
          "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": r(NB, H),
          "decoder.final_layer_norm.weight": r(W), "lm_head.weight": r(V, W)}
  flat["encoder.embed_tokens.weight"] = flat["shared.weight"]
  for i in range(L):
    pre = f"encoder.block.{i}.layer."
    for n in "qkv":
      flat[pre + f"0.SelfAttention.{n}.weight"] = r(H * E, W)
    flat[pre + "0.SelfAttention.o.weight"] = r(W, H * E)
    flat[pre + "0.layer_norm.weight"] = 1 + r(W)
    flat[pre + "1.layer_norm.weight"] = 1 + r(W)
    for n in (("wi_0", "wi_1") if gated else ("wi",)):
      flat[pre + f"1.DenseReluDense.{n}.weight"] = r(F, W)
    flat[pre + "1.DenseReluDense.wo.weight"] = r(W, F)
  return flat


def _bucket(rel, num_buckets=NB, max_distance=MD):
  """transformers' bidirectional _relative_position_bucket, element by element."""
  out = np.zeros_like(rel)
  for idx, n in np.ndenumerate(rel):
    nb = num_buckets // 2
    b = nb if n > 0 else 0
    n = abs(int(n))
    exact = nb // 2
    if n < exact:
      b += n
    else:
      b += min(exact + int(math.log(n / exact) / math.log(max_distance / exact) * (nb - exact)), nb - 1)
    out[idx] = b
  return out


def _rms(x, w):
  return x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-6) * w


def _reference(f, ids, mask, gated=True):
  f = {k: v.astype(np.float64) for k, v in f.items()}
  x = f["shared.weight"][ids]
  b, n = ids.shape
  pos = np.arange(n)
  bias = f["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"][
      _bucket(pos[None, :] - pos[:, None])].transpose(2, 0, 1)[None]
  bias = bias + np.where(mask[:, None, None, :], 0.0, -1e30)
  gelu = lambda a: 0.5 * a * (1 + np.tanh(np.sqrt(2 / np.pi) * (a + 0.044715 * a**3)))
  for i in range(L):
    pre = f"encoder.block.{i}.layer."
    h = _rms(x, f[pre + "0.layer_norm.weight"])
    split = lambda a: a.reshape(b, n, H, E).transpose(0, 2, 1, 3)
    q, k, v = (split(h @ f[pre + f"0.SelfAttention.{c}.weight"].T) for c in "qkv")
    s = q @ k.transpose(0, 1, 3, 2) + bias
    s = np.exp(s - s.max(-1, keepdims=True))
    s /= s.sum(-1, keepdims=True)
    a = (s @ v).transpose(0, 2, 1, 3).reshape(b, n, H * E)
    x = x + a @ f[pre + "0.SelfAttention.o.weight"].T
    h = _rms(x, f[pre + "1.layer_norm.weight"])
    dd = pre + "1.DenseReluDense."
    if gated:
      h = gelu(h @ f[dd + "wi_0.weight"].T) * (h @ f[dd + "wi_1.weight"].T)
    else:
      h = np.maximum(h @ f[dd + "wi.weight"].T, 0)
    x = x + h @ f[dd + "wo.weight"].T
  return _rms(x, f["encoder.final_layer_norm.weight"])


def test_buckets_match_the_reference_formula():
  rel = np.arange(-60, 61)[None]
  np.testing.assert_array_equal(T.relative_position_bucket(rel, num_buckets=NB, max_distance=MD),
                                _bucket(rel))
  full = np.arange(-300, 301)
  np.testing.assert_array_equal(T.relative_position_bucket(full), _bucket(full, 32, 128))


def test_outputs_match_the_reference_forward(tmp_path):
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  gated = True
  flat = _fixture(gated)
  save_file({k: np.ascontiguousarray(v) for k, v in flat.items()}, str(tmp_path / "t5.safetensors"))
  cfg, params = C.load(tmp_path / "t5.safetensors", dict(max_distance=MD))
  assert cfg == dict(vocab_size=V, width=W, depth=L, num_heads=H, head_dim=E, mlp_hidden=F,
                     mlp="geglu", num_buckets=NB, max_distance=MD)
  graphdef, _ = nnx.split(nnx.eval_shape(lambda: T.make_model(cfg, rngs=nnx.Rngs(0))))
  model = nnx.merge(graphdef, params)
  rng = np.random.default_rng(1)
  ids = rng.integers(0, V, (2, 30)).astype(np.int32)
  mask = np.ones((2, 30), bool)
  mask[1, 21:] = False
  out = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
  want = _reference(flat, ids, mask, gated)
  np.testing.assert_allclose(out, want, atol=2e-4)
  # Padding: the real tokens' outputs do not depend on what the padded ids are.
  ids2 = ids.copy()
  ids2[1, 21:] = 0
  out2 = np.asarray(model(jnp.asarray(ids2), jnp.asarray(mask)))
  np.testing.assert_allclose(out2[1, :21], out[1, :21], atol=1e-5)


def test_foreign_files_and_bad_inputs(tmp_path):
  with pytest.raises(ValueError, match="T5 v1.0 checkpoint .* is not supported"):
    C.infer_config(_fixture(gated=False))
  with pytest.raises(ValueError, match="not a T5 state dict"):
    C.infer_config({"vision_model.post_layernorm.weight": np.zeros(2)})
  with pytest.raises(ValueError, match="do not exist; expected a Hugging Face T5 checkpoint"):
    C.load(tmp_path / "model.safetensors")
  model = nnx.eval_shape(lambda: T.make_model(dict(  # the input checks run before any compute
      vocab_size=V, width=W, depth=1, num_heads=H, head_dim=E, mlp_hidden=F), rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match="ids must be an integer array"):
    model(jnp.zeros((2, 3), jnp.float32))
  with pytest.raises(ValueError, match=r"mask must have the shape of ids \(2, 3\)"):
    model(jnp.zeros((2, 3), jnp.int32), jnp.ones((2, 4), bool))
  with pytest.raises(ValueError, match="T5 mlp must be 'geglu'"):
    nnx.eval_shape(lambda: T.make_model(dict(mlp="swiglu"), rngs=nnx.Rngs(0)))
