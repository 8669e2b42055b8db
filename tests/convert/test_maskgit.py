"""Parity of converted official TiTok MaskGIT generators (ImageBert, UViTBert) with PyTorch.

tests/fixtures/official/maskgit_{imagebert,uvit}.safetensors: tiny random official generators
(width 32, 2 heads, MLP 64, 16 codes, 10 classes, 6 tokens; ImageBert 2 layers on transformers'
BertModel, UViT 4 = 2 in + mid + 2 out blocks) and their logits for fixed tokens (some masked) with
the class (cond_drop_prob 0) and with the null class (cond_drop_prob 1); see make_fixtures.py.txt.
"""
import functools
import gzip
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from jaxtok.convert import common
from jaxtok.convert import maskgit as M

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "official")
TOL = 1e-4
TINY = dict(codebook_size=16, seq_len=6, num_classes=10, width=32, heads=2, intermediate=64)
CONFIGS = {"maskgit_imagebert": dict(TINY, arch="bert", depth=2),
           "maskgit_uvit": dict(TINY, arch="uvit", depth=4)}


@functools.lru_cache(maxsize=None)
def _io(name):
  with np.load(os.path.join(FIXTURES, f"{name}_outputs.npz")) as f:
    return {k: f[k] for k in f.files}


def _path(name):
  return os.path.join(FIXTURES, f"{name}.safetensors")


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_logits_match_official_with_class_and_null_class(name):
  cfg, params = M.load(_path(name), CONFIGS[name])
  model = M.build(cfg, params)
  io = _io(name)
  tokens = jnp.asarray(io["tokens"])
  assert int(tokens.max()) == model.mask_id  # the fixture holds mask tokens
  cond = model(tokens, jnp.asarray(io["labels"]))
  null = model(tokens, None)
  assert cond.shape == (2, 6, 16)
  assert float(np.max(np.abs(np.asarray(cond) - io["logits"]))) < TOL
  assert float(np.max(np.abs(np.asarray(null) - io["null_logits"]))) < TOL
  assert float(np.max(np.abs(io["logits"] - io["null_logits"]))) > 3 * TOL  # the class shows
  # The id layout is jaxtok's MaskGIT one (so generators.bert.loss and samplers.maskgit apply).
  assert (model.mask_id, model.null_id) == (16, 27)
  np.testing.assert_array_equal(model.condition_ids(jnp.asarray([3, -1]), 2), [20, 27])


@pytest.mark.parametrize("name,options", [
    ("maskgit_imagebert", dict(scan_layers=True)),
    ("maskgit_imagebert", dict(scan_layers=True, remat="full")),
    ("maskgit_uvit", dict(remat="dots"))])
def test_scanned_and_rematerialised_generators_load_the_same_weights(name, options):
  """The unrolled per-layer names of the converter fill a scanned stack (fill_state stacks them);
  the logits equal the official ones either way."""
  cfg, params = M.load(_path(name), dict(CONFIGS[name], **options))
  model = M.build(cfg, params)
  if options.get("scan_layers"):
    assert model.layers.blocks.norm1.scale.shape == (2, 32)  # [L, W]
  io = _io(name)
  logits = model(jnp.asarray(io["tokens"]), jnp.asarray(io["labels"]))
  assert float(np.max(np.abs(np.asarray(logits) - io["logits"]))) < TOL


def test_shapes_give_the_sizes_and_wrong_configs_are_refused():
  flat, _ = common.read_checkpoint(_path("maskgit_imagebert"))
  got = M.infer_config(flat)
  assert {k: got[k] for k in ("arch", "codebook_size", "seq_len", "num_classes", "width", "depth",
                              "intermediate")} == {k: CONFIGS["maskgit_imagebert"][k] for k in (
      "arch", "codebook_size", "seq_len", "num_classes", "width", "depth", "intermediate")}
  with pytest.raises(ValueError, match=r"layers\.blocks\.0\.mlp\.up\.kernel: \[32, 64\] vs expected \[32, 128\]"):
    M.load(_path("maskgit_imagebert"), dict(CONFIGS["maskgit_imagebert"], intermediate=128))
  with pytest.raises(ValueError, match=r"missing keys \[.*in_blocks\.2\."):
    M.load(_path("maskgit_uvit"), dict(CONFIGS["maskgit_uvit"], depth=6))
  with pytest.raises(ValueError, match="not an official MaskGIT generator"):
    M.infer_config({"x.weight": np.zeros(2)})
  # Index buffers of older transformers versions are dropped, other extra tensors are not.
  flat2 = dict(flat, **{"model.embeddings.position_ids": np.arange(7)[None]})
  conv = M.convert(flat2, CONFIGS["maskgit_imagebert"])
  assert "model.embeddings.position_ids" not in conv


@pytest.mark.parametrize("name", sorted(M.RELEASED))
def test_every_released_generator_maps_onto_its_config(name):
  with gzip.open(os.path.join(FIXTURES, "release_shapes.json.gz"), "rt") as f:
    shapes = json.load(f)[name]
  cfg = M.released(name)
  flat = {k: np.broadcast_to(np.float32(0), tuple(s)) for k, s in shapes.items()}
  got = M.infer_config(flat)
  assert {k: got[k] for k in got if k != "name"} == {k: cfg[k] for k in got if k != "name"}
  # Every tensor and shape, with the stacks cut to 2 layers (layers all map alike) to keep it fast.
  keep = ("model.encoder.layer.0.", "model.encoder.layer.1.", "in_blocks.0.", "out_blocks.0.")
  short = {k: v for k, v in flat.items()
           if not k.startswith(("model.encoder.layer.", "in_blocks.", "out_blocks.")) or k.startswith(keep)}
  small = dict(cfg, depth=2)
  common.check_keys(common.state_shapes(M.abstract_params(small)), M.convert(short, small), source=name)


def test_official_generator_module_refuses_bad_arguments():
  from flax import nnx
  from jaxtok.generators import maskgit_official
  with pytest.raises(ValueError, match="even depth"):
    maskgit_official.OfficialMaskGIT(arch="uvit", codebook_size=16, seq_len=6, depth=3, width=32,
                                     heads=2, intermediate=64, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="scan_layers=True needs identical stacked blocks"):
    maskgit_official.OfficialMaskGIT(arch="uvit", codebook_size=16, seq_len=6, depth=2, width=32,
                                     heads=2, intermediate=64, scan_layers=True, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"unknown maskgit_official config key\(s\) \['widht'\]"):
    maskgit_official.make_model(dict(CONFIGS["maskgit_imagebert"], widht=3), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="arch must be one of"):
    maskgit_official.OfficialMaskGIT(arch="gpt", codebook_size=16, seq_len=6, rngs=nnx.Rngs(0))
  model = maskgit_official.make_model(dict(CONFIGS["maskgit_uvit"]), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="seq_len=6"):
    model(jnp.zeros((1, 5), jnp.int32))
