"""Parity of converted official DINOv2 weights with the official PyTorch outputs.

tests/fixtures/official/dinov2_tiny.safetensors holds two tiny random `DinoVisionTransformer`s of
facebookresearch/dinov2 b8931f7 (width 32, depth 2, 2 heads, patch 14, trained grid 4 x 4, LayerScale):
"reg." with 4 registers and the hub's antialiased position interpolation, "noreg." with the +0.1
offset quirk; outputs at 56 x 56 (the stored positions), 42 x 42 and 70 x 56 (interpolated). See
make_dinov2_fixture.py.txt.
"""
import functools
import os

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtok.convert import dinov2 as C
from jaxtok.nn import dinov2 as D

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "official")
WEIGHTS = os.path.join(FIXTURES, "dinov2_tiny.safetensors")
TOL = 1e-4
SIZES = ("56x56", "42x42", "70x56")


@functools.lru_cache(maxsize=None)
def _io():
  with np.load(os.path.join(FIXTURES, "dinov2_tiny_outputs.npz")) as f:
    return {k: f[k] for k in f.files}


@functools.lru_cache(maxsize=None)
def _model(prefix):
  cfg, params = C.load(WEIGHTS, dict(num_heads=2), prefix=prefix + ".")
  graphdef, _ = nnx.split(nnx.eval_shape(lambda: D.make_model(cfg, rngs=nnx.Rngs(0))))
  return cfg, nnx.merge(graphdef, params)


@pytest.mark.parametrize("prefix", ["reg", "noreg"])
def test_outputs_match_official_at_the_training_and_other_resolutions(prefix):
  cfg, model = _model(prefix)
  assert cfg == dict(width=32, depth=2, num_heads=2, patch_size=14, image_size=56,
                     num_registers=4 if prefix == "reg" else 0, ffn="mlp", layerscale=1.0)
  assert (model.antialias, model.offset) == ((True, 0.0) if prefix == "reg" else (False, 0.1))
  io = _io()
  for size in SIZES:
    images = jnp.asarray(io[f"images_{size}"].astype(np.float32) / np.float32(255.0))
    out = model(images)
    for key, name in (("cls", "x_norm_clstoken"), ("reg", "x_norm_regtokens"),
                      ("patch", "x_norm_patchtokens"), ("prenorm", "x_prenorm")):
      want = io[f"{prefix}_{size}_{key}"]
      assert out[name].shape == want.shape, (size, name)
      err = float(np.max(np.abs(np.asarray(out[name]) - want))) if want.size else 0.0
      assert err < TOL, (prefix, size, name, err)


def test_the_offset_quirk_and_antialias_change_the_interpolated_positions():
  """Without the quirk (offset 0, no antialias) the 3 x 3 positions differ from the official ones."""
  _, model = _model("noreg")
  quirk = np.asarray(model.positions(3, 3))
  model.offset = 0.0
  try:
    plain = np.asarray(model.positions(3, 3))
  finally:
    model.offset = 0.1
  assert np.max(np.abs(quirk - plain)) > 1e-3
  np.testing.assert_array_equal(quirk[0], plain[0])  # the cls row is never resampled
  np.testing.assert_array_equal(model.positions(4, 4), model.pos_embed.get_value())


def test_foreign_or_incomplete_files_are_refused(tmp_path):
  flat = C.read(WEIGHTS, prefix="reg.")
  with pytest.raises(ValueError, match="width 32 is not a released size"):
    C.infer_config(flat)
  with pytest.raises(ValueError, match="not a DINOv2 state dict"):
    C.infer_config({"encoder.conv_in.weight": np.zeros((2, 2))})
  with pytest.raises(ValueError, match=r"missing keys \[blocks\.blocks\.2\."):
    C.load(WEIGHTS, dict(num_heads=2, depth=3), prefix="reg.")
  with pytest.raises(ValueError, match="no tensor starts with prefix 'teacher.'"):
    C.read(WEIGHTS, prefix="teacher.")
  with pytest.raises(ValueError, match="does not exist"):
    C.load(str(tmp_path / "dinov2_vitb14_reg4_pretrain.pth"))
  with pytest.raises(TypeError, match="config must be a mapping"):
    C.load(WEIGHTS, "B", prefix="reg.")


def test_released_presets_and_swiglu_layout():
  assert D.config_for("g", 4)["ffn"] == "swiglu" and D.swiglu_hidden(1536) == 4096
  shapes = {k: tuple(v.shape) for k, v in nnx.to_flat_state(D.abstract_params(
      dict(size="g", depth=1)))}
  assert shapes[("blocks", "blocks", 0, "mlp", "gate", "kernel")] == (1536, 4096)
  # w12 [2M, W] splits into gate (first half) and up (second half).
  m, w = 6, 4
  w12 = np.arange(2 * m * w, dtype=np.float32).reshape(2 * m, w)
  out = C.convert({"blocks.0.mlp.w12.weight": w12, "blocks.0.mlp.w12.bias": np.arange(2 * m)}, 1)
  np.testing.assert_array_equal(out["blocks.blocks.0.mlp.gate.kernel"], w12[:m].T)
  np.testing.assert_array_equal(out["blocks.blocks.0.mlp.up.kernel"], w12[m:].T)
  np.testing.assert_array_equal(out["blocks.blocks.0.mlp.up.bias"], np.arange(m, 2 * m))
  with pytest.raises(ValueError, match="size must be one of"):
    D.config_for("XL")


def test_bad_inputs_name_the_argument():
  _, model = _model("reg")
  with pytest.raises(ValueError, match="multiples of the patch size 14, got 50 x 56"):
    model(jnp.zeros((1, 50, 56, 3)))
  with pytest.raises(ValueError, match=r"images must be \[B, H, W, 3\], got shape \(56, 56, 3\)"):
    model(jnp.zeros((56, 56, 3)))
  with pytest.raises(ValueError, match="out_size must be an int >= 1, got 0"):
    D.bicubic_weights(4, 0)
  with pytest.raises(ValueError, match="DINOv2 image_size must be a multiple of patch_size 14"):
    D.make_model(dict(width=32, depth=1, num_heads=2, image_size=50), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"unknown DINOv2 config key\(s\) \['heads'\]"):
    D.make_model(dict(width=32, depth=1, heads=2), rngs=nnx.Rngs(0))


def test_convert_registry_round_trip(tmp_path):
  """convert.convert("dinov2", ...) -> save_converted -> load_converted gives the same parameters;
  the model rebuilt from the saved config gives the official outputs."""
  import jax  # pylint: disable=g-import-not-at-top
  from jaxtok import convert  # pylint: disable=g-import-not-at-top
  flat = C.read(WEIGHTS, prefix="noreg.")
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  save_file(flat, str(tmp_path / "noreg.safetensors"))
  cfg, params = convert.convert("dinov2", str(tmp_path / "noreg.safetensors"), '{"num_heads": 2}')
  assert cfg["name"] == "dinov2" and cfg["num_registers"] == 0
  convert.save_converted(tmp_path / "out", cfg, params)
  cfg2, params2 = convert.load_converted(tmp_path / "out")
  assert cfg2 == cfg
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params2)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  out = D.features_fn(cfg2)(params2, jnp.asarray(_io()["images_42x42"] / np.float32(255.0)))
  np.testing.assert_allclose(out["x_norm_patchtokens"], _io()["noreg_42x42_patch"], atol=TOL)


@pytest.mark.parametrize("name,size", [("dinov2_vits14", "S"), ("dinov2_vitb14_reg", "B"),
                                       ("dinov2_vitl14_reg", "L"), ("dinov2_vitg14_reg", "g")])
def test_release_shapes_map_onto_the_presets(name, size):
  """The released state dicts (shapes from the hub builders on the meta device) convert onto the
  S/B/L/g-14 presets key for key (no weights: zero-stride arrays of the right shapes)."""
  import gzip  # pylint: disable=g-import-not-at-top
  import json  # pylint: disable=g-import-not-at-top
  from jaxtok.convert import common  # pylint: disable=g-import-not-at-top
  with gzip.open(os.path.join(FIXTURES, "dinov2_release_shapes.json.gz"), "rt") as f:
    shapes = json.load(f)[name]
  flat = {k: np.broadcast_to(np.float32(0), s) for k, s in shapes.items()}
  regs = 4 if name.endswith("_reg") else 0
  cfg = C.infer_config(flat)
  assert cfg == D.config_for(size, regs)
  common.check_keys(common.state_shapes(D.abstract_params(cfg)), C.convert(flat, cfg["num_heads"]),
                    source=name)
