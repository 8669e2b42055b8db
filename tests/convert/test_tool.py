"""tools/convert.py: official file -> orbax checkpoint + config.json -> the same parameters."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtok import convert
from jaxtok.tokenizers import api
from jaxtok.train import loop

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "official")
TINY = dict(name="titok", image_size=32, patch_size=8, encoder_width=32, encoder_depth=2,
            encoder_heads=2, decoder_width=32, decoder_depth=2, decoder_heads=2,
            num_latent_tokens=6, token_size=4, codebook_size=16, use_l2_norm=True)


def test_cli_round_trip_through_load_params(tmp_path):
  out = tmp_path / "titok"
  cfg_file = tmp_path / "cfg.json"
  cfg_file.write_text(json.dumps(TINY))
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  run = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "convert.py"), "--model", "titok",
                        "--config", str(cfg_file), "--weights",
                        os.path.join(FIXTURES, "titok_vq.safetensors"), "--out", str(out)],
                       capture_output=True, text=True, env=env, timeout=300)
  assert run.returncode == 0, run.stderr[-3000:]
  cfg = json.loads((out / "config.json").read_text())
  assert cfg == TINY
  tok = api.build(cfg)
  params = loop.load_params(str(out / "params"), tok)
  with np.load(os.path.join(FIXTURES, "titok_vq_outputs.npz")) as io:
    np.testing.assert_array_equal(np.asarray(tok.model(params).encode(jnp.asarray(io["images"])).tokens),
                                  io["tokens"])
  # A second run refuses to overwrite; a bad file fails with the converter's message.
  again = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "convert.py"), "--model", "titok",
                          "--config", str(cfg_file), "--weights",
                          os.path.join(FIXTURES, "titok_vae.safetensors"), "--out", str(tmp_path / "x")],
                         capture_output=True, text=True, env=env, timeout=300)
  assert again.returncode != 0 and "missing keys [codebook]" in again.stderr


def test_save_and_load_converted_generator_round_trip(tmp_path):
  cfg, params = convert.convert("maskgit", os.path.join(FIXTURES, "maskgit_uvit.safetensors"),
                                json.dumps(dict(arch="uvit", codebook_size=16, seq_len=6, num_classes=10,
                                                width=32, depth=4, heads=2, intermediate=64)))
  convert.save_converted(tmp_path / "g", cfg, params)
  cfg2, params2 = convert.load_converted(tmp_path / "g")
  assert cfg2 == cfg
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params2)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  with pytest.raises(ValueError, match="already exists"):
    convert.save_converted(tmp_path / "g", cfg, params)
  with pytest.raises(ValueError, match="model must be one of"):
    convert.convert("dalle", "x.bin")


def test_onedpiece_kind_names_the_config_onedpiece():
  small_pixel = dict(legacy_reshape=True, decoder_head="proxy_codes", pixel_ch=32,
                     pixel_ch_mult=[1, 1, 1, 1], pixel_num_res_blocks=1, pixel_z_channels=8)
  cfg, _ = convert.convert("onedpiece", os.path.join(FIXTURES, "onedpiece.safetensors"),
                           dict(TINY, **small_pixel))
  assert cfg["name"] == "onedpiece"
  with pytest.raises(ValueError, match="legacy TiTok layout"):
    convert.convert("onedpiece", os.path.join(FIXTURES, "titok_vq.safetensors"), TINY)
