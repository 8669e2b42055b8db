"""Parity of a converted official MaskGIT VQGAN with the official PyTorch outputs.

tests/fixtures/official/maskgit_vqgan.safetensors: the official Encoder/Decoder/VectorQuantizer
(bytedance/1d-tokenizer modeling/modules/maskgit_vqgan.py) at ch 32, ch_mult (2, 1) (so that every
nin_shortcut path runs), one residual block, z 8, 32 codes, 16 px; see make_fixtures.py.txt.
"""
import functools
import os

import jax.numpy as jnp
import numpy as np
import pytest

from jaxtok.convert import common
from jaxtok.convert import vqgan as V
from jaxtok.tokenizers import api

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "official")
WEIGHTS = os.path.join(FIXTURES, "maskgit_vqgan.safetensors")
TOL = 1e-4


@functools.lru_cache(maxsize=None)
def _io():
  with np.load(os.path.join(FIXTURES, "maskgit_vqgan_outputs.npz")) as f:
    return {k: f[k] for k in f.files}


def _err(a, b):
  return float(np.max(np.abs(np.asarray(a) - b)))


def test_shapes_give_the_config_and_outputs_match_official():
  flat, _ = common.read_checkpoint(WEIGHTS)
  cfg = V.infer_config(flat, image_size=16)
  assert cfg == dict(name="vqgan", image_size=16, ch=32, ch_mult=(2, 1), num_res_blocks=1,
                     z_channels=8, codebook_size=32, num_groups=32)
  cfg, params = V.load(WEIGHTS, cfg)
  model = api.build(cfg).model(params)
  io = _io()
  assert _err(model.encoder(jnp.asarray(io["images"])), io["latents"]) < TOL
  out = model.encode(jnp.asarray(io["images"]))
  np.testing.assert_array_equal(np.asarray(out.tokens), io["tokens"])
  assert _err(model.decode(jnp.asarray(io["tokens"])), io["decoded"]) < TOL


def test_wrong_config_or_foreign_file_is_refused():
  flat, _ = common.read_checkpoint(WEIGHTS)
  cfg = V.infer_config(flat, image_size=16)
  with pytest.raises(ValueError, match=r"codebook: \[32, 8\] vs expected \[64, 8\]"):
    V.load(WEIGHTS, dict(cfg, codebook_size=64))
  with pytest.raises(ValueError, match=r"missing keys \[decoder\.mid\.1\."):
    V.load(WEIGHTS, dict(cfg, num_res_blocks=2))
  with pytest.raises(ValueError, match="not a MaskGIT VQGAN state dict"):
    V.infer_config({"latent_tokens": np.zeros((2, 2))})


def test_release_shapes_map_onto_the_released_config():
  import gzip
  import json
  with gzip.open(os.path.join(FIXTURES, "release_shapes.json.gz"), "rt") as f:
    shapes = json.load(f)["maskgit-vqgan_imagenet_f16_256"]
  flat = {k: np.broadcast_to(np.float32(0), tuple(s)) for k, s in shapes.items()}
  cfg = V.RELEASED["maskgit-vqgan_imagenet_f16_256"]
  assert V.infer_config(flat) == cfg
  want = common.state_shapes(api.build(cfg).abstract_params())
  common.check_keys(want, V.convert(flat))
