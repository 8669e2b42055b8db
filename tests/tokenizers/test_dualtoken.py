"""DualToken (`tokenizers.dualtoken`) on the tiny config: independent vocabularies, falling losses."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtok.configs import dualtoken as config_lib
from jaxtok.data import photos
from jaxtok.tokenizers import api
from jaxtok.tokenizers import dualtoken as D
from tests.tokenizers.test_tokenflow import train_losses


@functools.lru_cache(maxsize=None)
def _setup():
  cfg = config_lib.get_config("tiny").model
  tok = api.build(cfg)
  params = nnx.state(D.make_model(cfg, rngs=nnx.Rngs(0)), nnx.Param)
  _, crops = photos.load_photos(16, heldout=8)
  return cfg, tok, params, jnp.asarray(crops)


def _replace(params, name, value):
  out = jax.tree.map(lambda x: x, params)
  out[name] = out[name].replace(value)
  return out


def test_the_two_vocabularies_are_independent():
  cfg, tok, params, images = _setup()
  encode = jax.jit(lambda p: tok.model(p).encode(images))
  base = encode(params)
  assert base.tokens.shape == (8, 16, 2) and base.tokens.dtype == jnp.int32
  assert tok.vocab_size == cfg.codebook_size
  rng = np.random.default_rng(0)
  for changed, kept in (("semantic", "pixel"), ("pixel", "semantic")):
    book = params[f"{changed}_codebook"].get_value()
    new = _replace(params, f"{changed}_codebook", jnp.asarray(rng.permutation(np.asarray(book)) * 1.5))
    out = encode(new)
    i_changed, i_kept = D.BRANCHES.index(changed), D.BRANCHES.index(kept)
    # The other vocabulary's ids and codes are bitwise the same; this one's ids moved.
    np.testing.assert_array_equal(out.tokens[..., i_kept], base.tokens[..., i_kept])
    assert np.any(np.asarray(out.tokens[..., i_changed]) != np.asarray(base.tokens[..., i_changed]))
  # Each id is its own codebook's nearest code of that branch's features.
  model = tok.model(params)
  feats = jax.jit(lambda p: tok.model(p).features(images))(params)
  z = model.pixel_in(feats["pixel"])
  book = np.asarray(params["pixel_codebook"].get_value())
  d = ((np.asarray(z)[..., None, :] - book)**2).sum(-1)
  np.testing.assert_array_equal(base.tokens[..., 1], np.argmin(d, -1))
  # decode reads only the pixel ids: changing the semantic ids leaves the images unchanged.
  other = base.tokens.at[..., 0].set((base.tokens[..., 0] + 1) % cfg.codebook_size)
  np.testing.assert_array_equal(tok.decode(params, base.tokens), tok.decode(params, other))


@pytest.mark.slow
def test_reconstruction_and_distillation_losses_fall():
  _, tok, params, images = _setup()
  hist, _, grads = train_losses(
      lambda p, rng: tok.model(p).train_forward(images, rng=rng), params, images, steps=30)
  # The distillation target passes a 64-code bottleneck (one VQ level): it falls more slowly.
  for term, ratio in (("pixel", 0.8), ("semantic", 0.92)):
    first, last = float(hist[0][term]), float(np.mean([h[term] for h in hist[-3:]]))
    assert last < ratio * first, (term, first, last)
  for g in jax.tree.leaves(grads["siglip"]):  # the teacher is frozen, the encoder learns
    assert not np.any(np.asarray(g))
  assert any(np.any(np.asarray(g)) for g in jax.tree.leaves(grads["encoder"]))


def test_bad_configs_and_inputs():
  cfg, tok, params, images = _setup()
  base = dict(cfg.to_dict())
  with pytest.raises(ValueError, match=r"pixel_layer must name a shallow block output in \[1, 1\].*got 2"):
    nnx.eval_shape(lambda: D.make_model(dict(base, pixel_layer=2), rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match=r"unknown DualToken config key\(s\) \['layers'\]"):
    nnx.eval_shape(lambda: D.make_model(dict(base, layers=2), rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match=r"tokens must have shape \[B, 16, 2\]"):
    tok.model(params).decode(jnp.zeros((1, 16), jnp.int32))
  with pytest.raises(ValueError, match="tokens"):
    tok.decode(params, jnp.full((1, 16, 2), 64, jnp.int32))
