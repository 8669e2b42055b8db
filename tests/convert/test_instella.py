"""Released Instella-T2I autoencoder -> jaxtok: parity with the release's own `BAE_Model`.

tests/fixtures/official/instella_tiny.safetensors: the release's `BAE_Model` at tiny sizes (16 px,
patch 4, 4 latent tokens of 64 bits, encoder and decoder 2 blocks of 2 heads x 16, one down / up
block after block 0, RoPE axes (4, 6, 6)), float16-rounded random weights; instella_tiny_outputs.npz:
its encoder bit logits, eval bits, `decode(bits)` and `forward` on two images, with
`set_scale(32)` (RoPE scale 8) and without (suffix _noscale); instella_release_shapes.json.gz: the
state-dict shapes of the released configuration (torch meta device). See make_instella_fixture.py.txt.
"""
import functools
import gzip
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file

from jaxtok.convert import common
from jaxtok.convert import instella as I
from jaxtok.tokenizers import api

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "official")
WEIGHTS = os.path.join(FIXTURES, "instella_tiny.safetensors")
TOL = 1e-4
TINY = dict(image_size=16, downsample_idx=(0,), upsample_idx=(0,), axes_dim=(4, 6, 6))


@functools.lru_cache(maxsize=None)
def _io():
  with np.load(os.path.join(FIXTURES, "instella_tiny_outputs.npz")) as f:
    return {k: f[k] for k in f.files}


@functools.lru_cache(maxsize=None)
def _converted(scale):
  flat, _ = common.read_checkpoint(WEIGHTS)
  cfg = dict(I.infer_config(flat), **TINY, rope_scale=scale)
  cfg, params = I.load(WEIGHTS, cfg)
  return cfg, nnx.merge(api.build(cfg).graphdef, params)


@functools.lru_cache(maxsize=None)
def _run(scale):
  _, model = _converted(scale)
  images = jnp.asarray(_io()["images"])

  @jax.jit
  def run(m, x, bits):
    return m.encode_logits(x), m.encode(x).tokens, m.decode_codes(bits.astype(jnp.float32))

  suffix = "" if scale else "_noscale"
  return [np.asarray(a) for a in run(model, images, jnp.asarray(_io()["bits" + suffix]))]


def test_shapes_give_the_tiny_config():
  flat, _ = common.read_checkpoint(WEIGHTS)
  cfg = I.infer_config(flat)
  assert {k: cfg[k] for k in ("patch_size", "num_latent_tokens", "bits", "encoder_width",
                              "encoder_heads", "encoder_depth", "decoder_width", "decoder_heads",
                              "decoder_depth")} == dict(
      patch_size=4, num_latent_tokens=4, bits=64, encoder_width=32, encoder_heads=2,
      encoder_depth=2, decoder_width=32, decoder_heads=2, decoder_depth=2)
  assert I.RELEASED["instella_t2i_bae"]["rope_scale"] == 64.0


@pytest.mark.parametrize("scale", [8.0, None])
def test_encoder_logits_bits_and_decoder_match_the_release(scale):
  io, suffix = _io(), "" if scale else "_noscale"
  logits, bits, decoded = _run(scale)
  np.testing.assert_allclose(logits, io["logits" + suffix], atol=TOL, rtol=0)
  # Bits are thresholds of the logits: equal wherever the logit is not within rounding of 0.
  sure = np.abs(io["logits" + suffix]) > 1e-3
  np.testing.assert_array_equal(bits[sure], io["bits" + suffix][sure])
  # Decoding the release's bits (the release's decode and its whole forward agree).
  np.testing.assert_allclose(decoded, io["decoded" + suffix], atol=TOL, rtol=0)
  np.testing.assert_allclose(io["forward" + suffix], io["decoded" + suffix], atol=TOL, rtol=0)


def test_rope_scale_changes_the_outputs():
  # The scaled and unscaled fixture runs differ: the test above would catch a scale ignored.
  assert np.abs(_io()["logits"] - _io()["logits_noscale"]).max() > 1e-2


def test_facade_reconstruct_is_the_release_forward_in_unit_range():
  # The unscaled run: none of its logits is within 4e-3 of 0, so every bit is determined.
  assert np.abs(_io()["logits_noscale"]).min() > 1e-3
  cfg, model = _converted(None)
  tok = api.build(cfg)
  params = nnx.split(model)[1]
  images = jnp.asarray(_io()["images"])
  out = tok.encode(params, images)
  assert out.tokens.shape == (2, 4, 64) and tok.vocab_size == 2
  np.testing.assert_array_equal(np.asarray(out.tokens), _io()["bits_noscale"])
  np.testing.assert_allclose(np.asarray(tok.reconstruct(params, images)),
                             (_io()["forward_noscale"] + 1) / 2, atol=TOL, rtol=0)


def test_the_released_layout_converts_to_the_released_config():
  with gzip.open(os.path.join(FIXTURES, "instella_release_shapes.json.gz"), "rt") as f:
    shapes = json.load(f)
  # Zero-stride arrays: the converter's transposes and reshapes stay views (no 427M-value copy).
  flat = {k: np.broadcast_to(np.zeros((), np.float16), v) for k, v in shapes.items()}
  cfg = I.infer_config(flat)
  assert cfg == I.RELEASED["instella_t2i_bae"]
  expected = {k.replace("/", "."): v for k, v in
              api.param_shapes(api.build(cfg).abstract_params()).items()}
  common.check_keys(expected, I.convert(flat))


def test_wrong_files_are_refused_by_name(tmp_path):
  flat, _ = common.read_checkpoint(WEIGHTS)
  cfg = dict(I.infer_config(flat), **TINY)
  broken = {k: np.asarray(v, np.float32) for k, v in flat.items() if k != "to_pixel.bias"}
  broken["decoder.extra.weight"] = np.zeros((2,), np.float32)
  broken["decoder.repa_proj.0.weight"] = np.zeros((2, 2), np.float32)  # dropped, not an error
  path = str(tmp_path / "broken.safetensors")
  save_file(broken, path)
  with pytest.raises(ValueError, match=r"missing keys \[to_pixel.bias\].*unexpected keys "
                                       r"\[decoder.extra.weight\]"):
    I.load(path, cfg)
  with pytest.raises(ValueError, match="not an Instella-T2I autoencoder"):
    I.infer_config({"foo.weight": np.zeros(2)})
