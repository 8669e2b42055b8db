"""TexTok (`tokenizers.textok`) on the tiny config: the captions enter the encoder and the decoder."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtok.configs import textok as config_lib
from jaxtok.data import captions, photos
from jaxtok.tokenizers import textok as X
from tests.tokenizers.test_tokenflow import train_losses


@functools.lru_cache(maxsize=None)
def _setup():
  cfg = config_lib.get_config("tiny").model
  model = X.make_model(cfg, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)
  _, crops = photos.load_photos(16, heldout=8)
  vocab = captions.WordVocab()
  ids, mask = vocab.encode(list(captions.CAPTIONS.values())[:8], length=12)
  return cfg, graphdef, params, jnp.asarray(crops), jnp.asarray(ids), jnp.asarray(mask)


def test_captions_change_the_tokens_and_the_decoded_images():
  cfg, graphdef, params, images, ids, mask = _setup()

  @jax.jit
  def run(params, ids, mask):
    m = nnx.merge(graphdef, params)
    tokens = m.encode(images, ids, mask).tokens
    return tokens, m.decode(tokens, ids, mask)

  tokens, recon = run(params, ids, mask)
  assert tokens.shape == (8, cfg.num_latent_tokens, cfg.token_size) and recon.shape == images.shape
  other = jnp.roll(ids, 1, axis=0)  # every image gets another photograph's caption
  other_mask = jnp.roll(mask, 1, axis=0)
  tokens2, _ = run(params, other, other_mask)
  assert float(jnp.min(jnp.abs(tokens2 - tokens).max(axis=(1, 2)))) > 1e-4  # encoder reads text
  m = nnx.merge(graphdef, params)
  recon2 = jax.jit(lambda t, i, k: m.decode(t, i, k))(tokens, other, other_mask)
  assert float(jnp.min(jnp.abs(recon2 - recon).max(axis=(1, 2, 3)))) > 1e-4  # decoder too
  # Padding positions are masked: other ids under the padding leave everything unchanged.
  padded = jnp.where(mask, ids, 5)
  tokens3, recon3 = run(params, padded, mask)
  np.testing.assert_allclose(tokens3, tokens, atol=1e-5)
  np.testing.assert_allclose(recon3, recon, atol=1e-5)


@pytest.mark.slow
def test_tiny_loss_falls_and_t5_stays_frozen():
  _, graphdef, params, images, ids, mask = _setup()
  forward = lambda p, rng: nnx.merge(graphdef, p).train_forward(images, rng=rng, text_ids=ids,
                                                                text_mask=mask)
  hist, _, grads = train_losses(forward, params, images, steps=30)
  first, last = float(hist[0]["pixel"]), float(np.mean([h["pixel"] for h in hist[-3:]]))
  assert last < 0.8 * first, (first, last)
  for g in jax.tree.leaves(grads["t5"]):
    assert not np.any(np.asarray(g))


def test_with_t5_and_bad_inputs(tmp_path):
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  cfg, graphdef, params, images, ids, mask = _setup()
  t5 = cfg.t5
  rng = np.random.default_rng(0)
  shapes = {"shared.weight": (t5["vocab_size"], 16), "encoder.final_layer_norm.weight": (16,),
            "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": (32, 2),
            "encoder.block.0.layer.0.layer_norm.weight": (16,),
            "encoder.block.0.layer.1.layer_norm.weight": (16,),
            "encoder.block.0.layer.0.SelfAttention.o.weight": (16, 16),
            "encoder.block.0.layer.1.DenseReluDense.wo.weight": (16, 32)}
  shapes.update({f"encoder.block.0.layer.0.SelfAttention.{c}.weight": (16, 16) for c in "qkv"})
  shapes.update({f"encoder.block.0.layer.1.DenseReluDense.{c}.weight": (32, 16)
                 for c in ("wi_0", "wi_1")})
  save_file({k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()},
            str(tmp_path / "t5.safetensors"))
  loaded = X.with_t5(params, str(tmp_path / "t5.safetensors"))
  assert loaded["t5"]["embed"].get_value().shape == (t5["vocab_size"], 16)
  with pytest.raises(ValueError, match="do not exist"):
    X.with_t5(params, str(tmp_path / "absent.safetensors"))
  m = nnx.merge(graphdef, params)
  with pytest.raises(ValueError, match=r"text_ids must be int \[B, Lt\] with B = 8"):
    m.encode(images, ids[:2], mask[:2])
  with pytest.raises(ValueError, match=r"tokens must be float \[B, 4, 4\]"):
    m.decode(jnp.zeros((8, 3, 4)), ids, mask)
  with pytest.raises(ValueError, match="t5 must be a mapping"):
    nnx.eval_shape(lambda: X.make_model(dict(cfg.to_dict(), t5=None), rngs=nnx.Rngs(0)))
