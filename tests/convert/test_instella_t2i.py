"""Released Instella-T2I generators -> jaxtok: parity with the release's own network classes.

tests/fixtures/official/instella_t2i_tiny.safetensors: the release's `Instella_Binary_Diff` ("diff.")
and `Instella_AR_Model` ("ar.") at tiny sizes (8 bits, 2 layers, 2 heads x 16, 8 image tokens, text
width 16), float16-rounded random weights; instella_t2i_tiny_io.npz: random text features
[2, 3, 5, 16], the mask [[1]*5, [0,0,1,1,1], [0]*5] (full, left-padded, all padding), bits, and the
release's outputs (diffusion at two time vectors; AR for 7, 3 and 0 input tokens) with flash
attention replaced by a masked-softmax reference of its varlen semantics;
instella_t2i_release_shapes.json.gz: the state-dict shapes of the released sizes (torch meta
device). See make_instella_t2i_fixture.py.txt.
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

from jaxtok import convert as convert_lib
from jaxtok.convert import common
from jaxtok.convert import instella_t2i as C
from jaxtok.generators import instella_ar, instella_diff

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "official")
WEIGHTS = os.path.join(FIXTURES, "instella_t2i_tiny.safetensors")
TOL = 1e-4
TINY = dict(num_bits=8, seq_len=8, text_dim=16, width=32, depth=2, heads=2)


@functools.lru_cache(maxsize=None)
def _io():
  with np.load(os.path.join(FIXTURES, "instella_t2i_tiny_io.npz")) as f:
    return {k: f[k] for k in f.files}


@functools.lru_cache(maxsize=None)
def _flat(prefix):
  flat, _ = common.read_checkpoint(WEIGHTS)
  return {k[len(prefix) + 1:]: v.astype(np.float32) for k, v in flat.items()
          if k.startswith(prefix + ".")}


@functools.lru_cache(maxsize=None)
def _model(name):
  conv = C.CONVERTERS[name]
  flat = _flat("ar" if name == "instella_ar" else "diff")
  cfg = conv.resolve_config(None, flat)
  params = common.fill_state(conv.abstract_params(cfg), conv.convert(flat, cfg))
  return cfg, conv.build(cfg, params)


@pytest.mark.parametrize("name", ["instella_diff", "instella_ar"])
def test_shapes_give_the_tiny_config(name):
  cfg, _ = _model(name)
  assert {k: cfg[k] for k in TINY} == TINY and cfg["name"] == name


_call = nnx.jit(lambda m, *args: m(*args))


@functools.lru_cache(maxsize=None)
def _diff_outputs():
  _, model = _model("instella_diff")
  io = _io()
  run = _call
  feats, mask = jnp.asarray(io["features"]), jnp.asarray(io["mask"])
  return [np.asarray(run(model, jnp.asarray(io["bits"]), jnp.asarray(io[t]), feats, mask))
          for t in ("t_a", "t_b")]


@pytest.mark.parametrize("which", [0, 1])
def test_diffusion_matches_release(which):
  """Flip logits at t = (0.05, 0.5, 0.97) and (1, 0.3, 0) for a full, a left-padded and an
  all-padding text row: within 1e-4 of the release."""
  want = _io()["diff_a" if which == 0 else "diff_b"]
  got = _diff_outputs()[which]
  np.testing.assert_allclose(got, want, atol=TOL, rtol=0)
  assert np.abs(want).mean() > 0.3  # not a trivially small output


@pytest.mark.parametrize("inputs,key", [(7, "ar_full"), (3, "ar_3"), (0, "ar_none")])
def test_ar_matches_release(inputs, key):
  """Logits for bits[:, :M] (M = 7: training's input; 3; 0: the split token alone)."""
  _, model = _model("instella_ar")
  io = _io()
  got = _call(model, jnp.asarray(io["bits"])[:, :inputs], jnp.asarray(io["features"]),
              jnp.asarray(io["mask"]))
  assert got.shape == (3, inputs + 1, 8)
  np.testing.assert_allclose(np.asarray(got), io[key], atol=TOL, rtol=0)


def test_text_mask_matters_and_padding_is_hidden():
  """The padded keys are hidden: changing the features at padded positions leaves the outputs of
  the padded rows unchanged, while changing a real token's feature changes them."""
  _, model = _model("instella_diff")
  io = _io()
  feats, mask = jnp.asarray(io["features"]), jnp.asarray(io["mask"])
  bits, t = jnp.asarray(io["bits"]), jnp.asarray(io["t_a"])
  base = _call(model, bits, t, feats, mask)
  noisy = feats.at[:, 1, :2].add(5.0).at[:, 2].add(5.0)  # row 1's padding, all of row 2
  np.testing.assert_allclose(np.asarray(_call(model, bits, t, noisy, mask)), np.asarray(base),
                             atol=1e-6)
  real = feats.at[:, 1, 3].add(1.0)
  assert np.abs(np.asarray(_call(model, bits, t, real, mask) - base))[1].max() > 1e-3


def test_load_reads_a_file_and_names_missing_tensors(tmp_path):
  flat = _flat("diff")
  path = str(tmp_path / "diffusion.safetensors")
  save_file(dict(flat), path)
  cfg, params = convert_lib.convert("instella_diff", path)
  assert cfg["name"] == "instella_diff" and cfg["depth"] == 2
  want = np.asarray(flat["transformer_blocks.1.proj_cond.weight"]).T
  np.testing.assert_array_equal(np.asarray(params["layers"][1]["proj_cond"]["kernel"].get_value()),
                                want)
  # tools/convert.py's round trip: saved, then rebuilt as a generator.
  out = convert_lib.save_converted(str(tmp_path / "conv"), cfg, params)
  cfg2, graphdef, params2 = convert_lib.load_converted_generator(out)
  assert cfg2 == cfg
  np.testing.assert_array_equal(np.asarray(params2["x_embed"]["kernel"].get_value()),
                                np.asarray(flat["x_embedder.weight"]).T)
  assert isinstance(nnx.merge(graphdef, params2), instella_diff.InstellaDiff)
  broken = {k: v for k, v in flat.items() if k != "transformer_blocks.1.attn.o_proj.weight"}
  bad = str(tmp_path / "broken.safetensors")
  save_file(broken, bad)
  with pytest.raises((ValueError, KeyError), match="o_proj"):
    C.load(bad, model="instella_diff")
  with pytest.raises(ValueError, match="instella_ar"):
    C.load(path, model="instella_gpt")
  with pytest.raises(ValueError, match="split_token"):  # a diffusion file is not an AR file
    C.load(path, model="instella_ar")


def test_ar_converter_drops_the_unused_time_embedding():
  flat = _flat("ar")
  assert any(k.startswith("time_embed.") for k in flat)  # the release builds it
  cfg, _ = _model("instella_ar")
  names = set(C.CONVERTERS["instella_ar"].convert(C._released_keys(flat, True), cfg))
  assert not any("time" in n for n in names)


@pytest.mark.slow
@pytest.mark.parametrize("name,key", [("instella_diff", "diff"), ("instella_ar", "ar")])
def test_release_shapes_convert(name, key):
  """The released sizes (64 bits, 128 tokens, 16 layers of 16 x 128 heads, text width 2048) read
  off the meta-device state dict, and every tensor maps onto the model's parameters (shapes only:
  `jax.eval_shape`, nothing allocated)."""
  with gzip.open(os.path.join(FIXTURES, "instella_t2i_release_shapes.json.gz"), "rt") as f:
    shapes = json.load(f)[key]
  flat = {k: jax.ShapeDtypeStruct(tuple(v), jnp.float32) for k, v in shapes.items()}
  conv = C.CONVERTERS[name]
  cfg = conv.resolve_config(None, flat)
  assert {k: cfg[k] for k in C._FULL} == C._FULL
  out = jax.eval_shape(lambda fl: conv.convert(fl, cfg), flat)
  abstract = conv.abstract_params(cfg)
  assert {k: tuple(v.shape) for k, v in out.items()} == common.state_shapes(abstract)
