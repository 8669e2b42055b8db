"""convert.olmo against HF transformers 4.57.6 `OlmoForCausalLM` (tests/fixtures/official/olmo_tiny,
made by make_olmo_fixture.py.txt): two tiny random checkpoints saved by `save_pretrained` in float16
(plain: tied embeddings, one model.safetensors, rope_theta 500; clip: clip_qkv 0.3 with half of the
projections beyond it, untied lm_head, sharded with model.safetensors.index.json), and their eager
`hidden_states[1:]` on a left-padded batch with an all-padding row. Also the release's layout:
AMD-OLMo-1B's config.json and state-dict shapes (torch meta device) through the converter."""
import functools
import gzip
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtok import convert
from jaxtok.convert import common
from jaxtok.convert import olmo as C
from jaxtok.nn import olmo

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "official")
TINY = os.path.join(FIXTURES, "olmo_tiny")


@functools.lru_cache(maxsize=None)
def _io():
  with np.load(os.path.join(TINY, "io.npz")) as f:
    return {k: f[k] for k in f.files}


@functools.lru_cache(maxsize=None)
def _loaded(variant):
  cfg, params = C.load(os.path.join(TINY, variant))
  io = _io()
  out = jax.jit(olmo.hidden_states_fn(cfg))(params, jnp.asarray(io["ids"]), jnp.asarray(io["mask"]))
  return cfg, params, np.asarray(out)


@pytest.mark.parametrize("variant", ["plain", "clip"])
def test_hidden_states_match_transformers(variant):
  cfg, _, got = _loaded(variant)
  io = _io()
  valid = io["mask"].astype(bool)
  assert got.shape == io[variant].shape == (2, 3, 7, 32)
  np.testing.assert_allclose(got[:, valid], io[variant][:, valid], atol=1e-4, rtol=1e-4)
  assert np.isfinite(got).all()
  # Pads (the all-padding row included): HF eager's uniform weights, reproduced to rounding.
  np.testing.assert_allclose(got[:, ~valid], io[variant][:, ~valid], atol=1e-4, rtol=1e-4)
  # HF with position_ids starting at 0 in each row agrees on the real tokens: the release's
  # arange(T) under left padding changes nothing there.
  np.testing.assert_allclose(got[:, valid], io[variant + "_shifted"][:, valid], atol=1e-4)
  assert cfg["rope_theta"] == (500.0 if variant == "plain" else 10000.0)
  assert cfg["clip_qkv"] == (None if variant == "plain" else 0.3)


def test_tool_registry_route_with_overrides_scans_the_same(tmp_path):
  cfg, params = convert.convert("olmo", os.path.join(TINY, "clip"), '{"scan_layers": true}')
  assert cfg["name"] == "olmo" and cfg["scan_layers"] is True
  # What tools/convert.py writes loads back through the frozen-tower registry.
  convert.save_converted(tmp_path / "out", cfg, params)
  cfg, params = convert.load_converted(tmp_path / "out")
  assert params["layers"]["blocks"]["attn"]["qkv"].get_value().shape == (2, 32, 3, 4, 8)
  io = _io()
  got = olmo.hidden_states_fn(cfg)(params, jnp.asarray(io["ids"]), jnp.asarray(io["mask"]))
  np.testing.assert_allclose(np.asarray(got), _loaded("clip")[2], atol=1e-5)


def test_release_layout_converts_with_abstract_params():
  with gzip.open(os.path.join(FIXTURES, "olmo_release_shapes.json.gz"), "rt") as f:
    release = json.load(f)
  cfg = C.config_from_hf(release["config"])
  assert cfg == dict(olmo.config_for("amd-olmo-1b"), clip_qkv=None, attention_bias=False)
  # Zero-stride one-byte arrays: the transposes and reshapes stay views; only the q/k/v stacks
  # allocate (3 x 2048^2 bytes per layer), never the 1.2B float32 values.
  flat = {k: np.broadcast_to(np.zeros((), np.bool_), v) for k, v in release["shapes"].items()}
  assert "lm_head.weight" in flat  # dropped by the converter
  converted = C.convert(flat, cfg["num_heads"])
  common.check_keys(common.state_shapes(olmo.abstract_params(cfg)), converted)


def test_wrong_checkpoints_are_refused_by_name(tmp_path):
  with pytest.raises(ValueError, match="does not exist; expected a Hugging Face OLMo checkpoint"):
    C.load(tmp_path / "nothing")
  with pytest.raises(ValueError, match="holds no config.json"):
    C.load(tmp_path)
  bad = tmp_path / "gqa"
  shutil.copytree(os.path.join(TINY, "plain"), bad)
  hf = json.loads((bad / "config.json").read_text())
  (bad / "config.json").write_text(json.dumps(dict(hf, num_key_value_heads=2)))
  with pytest.raises(ValueError, match="num_key_value_heads must equal num_attention_heads 4"):
    C.load(bad)
  (bad / "config.json").write_text(json.dumps(dict(hf, hidden_size=48)))
  with pytest.raises(ValueError, match=r"shape mismatches \[embed: \[256, 32\] vs expected "
                                       r"\[256, 48\]"):
    C.load(bad)
  (bad / "config.json").write_text(json.dumps(dict(hf, num_hidden_layers=3)))
  with pytest.raises(ValueError, match=r"missing keys \[layers.blocks.2.attn.out"):
    C.load(bad)
  with pytest.raises(ValueError, match="model_type must be 'olmo'"):
    C.config_from_hf(dict(hf, model_type="olmo2"))
  with pytest.raises(ValueError, match="rope_scaling must be null"):
    C.config_from_hf(dict(hf, rope_scaling={"type": "linear", "factor": 2.0}))
  (bad / "config.json").write_text(json.dumps(hf))
  os.remove(bad / "model.safetensors")
  with pytest.raises(ValueError, match="holds no model.safetensors, model.safetensors.index.json"):
    C.load(bad)


def test_attention_bias_tensors_map_onto_the_fused_biases(tmp_path):
  """attention_bias (False in every released OLMo v1): zero biases give the bias-free outputs;
  the q/k/v biases land in qkv_bias [3, H, E] in order and o_proj's in out_bias."""
  from safetensors.numpy import save_file
  flat, _ = common.read_checkpoint(os.path.join(TINY, "plain", "model.safetensors"))
  flat = {k: np.asarray(v, np.float32) for k, v in flat.items()}
  for i in range(2):
    for j, c in enumerate("qkvo"):
      flat[f"model.layers.{i}.self_attn.{c}_proj.bias"] = np.full((32,), float(j), np.float32)
  d = tmp_path / "biased"
  d.mkdir()
  save_file(flat, os.fspath(d / "model.safetensors"))
  hf = json.loads(open(os.path.join(TINY, "plain", "config.json")).read())
  (d / "config.json").write_text(json.dumps(dict(hf, attention_bias=True)))
  cfg, params = C.load(d)
  attn = params["layers"]["blocks"][1]["attn"]
  np.testing.assert_array_equal(attn["qkv_bias"].get_value()[:, 0, 0], [0.0, 1.0, 2.0])
  np.testing.assert_array_equal(attn["out_bias"].get_value(), np.full((32,), 3.0))
  for i in range(2):  # zeroed in place: then the biased tower is the plain one
    for name in ("qkv_bias", "out_bias"):
      p = params["layers"]["blocks"][i]["attn"][name]
      p.set_value(jnp.zeros_like(p.get_value()))
  io = _io()
  got = olmo.hidden_states_fn(cfg)(params, jnp.asarray(io["ids"]), jnp.asarray(io["mask"]))
  np.testing.assert_allclose(np.asarray(got), _loaded("plain")[2], atol=1e-5)
