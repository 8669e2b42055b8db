"""tools/convert.py: official file -> orbax checkpoint + config.json -> the same parameters."""
import importlib.util
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtok import convert
from jaxtok.tokenizers import api
from jaxtok.train import checkpoint as ckpt_lib

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "official")
TINY = dict(name="titok", image_size=32, patch_size=8, encoder_width=32, encoder_depth=2,
            encoder_heads=2, decoder_width=32, decoder_depth=2, decoder_heads=2,
            num_latent_tokens=6, token_size=4, codebook_size=16, use_l2_norm=True)


def _run_tool(*args):
  """tools/convert.py's main, in process (a subprocess would pay for a second jax start)."""
  from absl import flags
  spec = importlib.util.spec_from_file_location("convert_tool", os.path.join(ROOT, "tools", "convert.py"))
  tool = importlib.util.module_from_spec(spec)
  saved = {name: flags.FLAGS[name] for name in ("model", "config", "weights", "out", "list", "initg")
           if name in flags.FLAGS}
  for name in saved:
    delattr(flags.FLAGS, name)
  try:
    spec.loader.exec_module(tool)
    flags.FLAGS(["convert.py", *args])
    return tool.main([])
  finally:
    for name in ("model", "config", "weights", "out", "list", "initg"):
      if name in flags.FLAGS:
        delattr(flags.FLAGS, name)
    flags.FLAGS.unparse_flags()


def test_cli_round_trip_through_load_params(tmp_path, capsys):
  out = tmp_path / "titok"
  cfg_file = tmp_path / "cfg.json"
  cfg_file.write_text(json.dumps(TINY))
  _run_tool("--model", "titok", "--config", str(cfg_file),
            "--weights", os.path.join(FIXTURES, "titok_vq.safetensors"), "--out", str(out))
  assert "parameters) and" in capsys.readouterr().out
  cfg = json.loads((out / "config.json").read_text())
  assert cfg == TINY
  tok = api.build(cfg)
  params, _ = ckpt_lib.load_params(str(out / "params"), tok.abstract_params())
  with np.load(os.path.join(FIXTURES, "titok_vq_outputs.npz")) as io:
    np.testing.assert_array_equal(np.asarray(tok.model(params).encode(jnp.asarray(io["images"])).tokens),
                                  io["tokens"])
  # A file of another kind fails with the converter's message.
  with pytest.raises(ValueError, match=r"missing keys \[codebook\]"):
    _run_tool("--model", "titok", "--config", str(cfg_file),
              "--weights", os.path.join(FIXTURES, "titok_vae.safetensors"), "--out", str(tmp_path / "x"))
  _run_tool("--list")
  assert "tokenizer_titok_l32_imagenet" in capsys.readouterr().out


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


def test_flextok_through_the_dispatcher_and_load_converted(tmp_path):
  # The tiny FlexTok fixture needs two overrides its sizes do not imply (see test_flextok.py).
  cfg, params = convert.convert("flextok", os.path.join(FIXTURES, "flextok_tiny.safetensors"),
                                dict(image_size=32, vae_norm_groups=4))
  convert.save_converted(tmp_path / "f", cfg, params)
  cfg2, params2 = convert.load_converted(tmp_path / "f")
  assert cfg2["name"] == "flextok"
  leaves, leaves2 = jax.tree.leaves(params), jax.tree.leaves(params2)
  assert len(leaves) == len(leaves2)
  for a, b in zip(leaves, leaves2):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
