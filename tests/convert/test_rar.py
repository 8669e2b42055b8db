"""Parity of a converted official RAR (bytedance/1d-tokenizer `modeling/rar.py`) with PyTorch.

tests/fixtures/official/rar_tiny.safetensors: a tiny re-randomised official RAR (width 32, 2 layers,
4 heads, MLP 128, 16 tokens, 32 codes, 10 classes) and rar_tiny_outputs.npz: its logits for fixed
tokens with a class and the null class, in raster order, in one random order per sample, and through
its KV cache; see make_rar_fixture.py.txt.
"""
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtok import convert
from jaxtok.convert import common
from jaxtok.convert import rar as R

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "official")
PATH = os.path.join(FIXTURES, "rar_tiny.safetensors")
TOL = 1e-4
TINY = dict(codebook_size=32, seq_len=16, num_classes=10, width=32, depth=2, heads=4)


@functools.lru_cache(maxsize=None)
def _io():
  with np.load(os.path.join(FIXTURES, "rar_tiny_outputs.npz")) as f:
    return {k: f[k] for k in f.files}


def _err(a, b):
  return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


def test_logits_match_official_in_raster_and_random_order():
  cfg, params = R.load(PATH, TINY)
  model = R.build(cfg, params)
  io = _io()
  tokens, labels = jnp.asarray(io["tokens"]), jnp.asarray(io["labels"])
  np.testing.assert_array_equal(model.condition_ids(labels, 2), io["condition"])  # same id layout
  # The official output has one more position (after the last token), which predicts nothing.
  assert _err(model(tokens, labels), io["logits_raster"][:, :16]) < TOL
  orders = jnp.asarray(io["orders"])
  assert (io["orders"] != np.arange(16)).any(axis=1).all()  # both samples really permuted
  assert _err(model(tokens, labels, orders=orders), io["logits_random"][:, :16]) < TOL
  np.testing.assert_array_equal(np.take_along_axis(io["tokens"], io["orders"], 1), io["labels_random"])
  # The null class and the order both show in the outputs (the fixture is not degenerate).
  assert _err(io["logits_raster"], io["logits_random"]) > 100 * TOL


def test_kv_cache_on_converted_weights_matches_official_cache():
  cfg, params = R.load(PATH, dict(TINY, scan_layers=True))
  model = R.build(cfg, params)
  assert model.blocks.blocks.ada.kernel.shape == (2, 32, 192)  # [L, W, 6W]: stacked by fill_state
  io = _io()
  tokens, labels = jnp.asarray(io["tokens"]), jnp.asarray(io["labels"])

  @jax.jit
  def cached(tokens, labels):
    logits, cache = model.prefill(model.condition_ids(labels, 2)[:, None], model.init_cache(2))
    out = [logits]
    for i in range(1, 16):
      logits, cache = model.step(tokens[:, i - 1], jnp.int32(i), cache)
      out.append(logits)
    return jnp.stack(out, axis=1)

  assert _err(cached(tokens, labels), io["logits_kv"]) < TOL


def test_config_from_shapes_released_names_and_refusals():
  flat, _ = common.read_checkpoint(PATH)
  # The fixture keeps 18 rows of the position tables (a release has seq + 1024); the time table
  # keeps the release's seq + 100 rows, which give seq_len.
  got = R.infer_config(flat)
  assert {k: got[k] for k in ("codebook_size", "seq_len", "num_classes", "width", "depth",
                              "mlp_ratio")} == dict(codebook_size=32, seq_len=16, num_classes=10,
                                                    width=32, depth=2, mlp_ratio=4.0)
  assert got["heads"] == 16  # assumed (not in the tensors): pass the config for other head counts
  assert R.resolve_config("rar_xl")["width"] == 1280
  assert R.resolve_config("yucornetto/RAR/rar_xxl.bin")["depth"] == 40
  official = {"model": {"vq_model": {"codebook_size": 1024}, "generator": {
      "hidden_size": 768, "num_hidden_layers": 24, "num_attention_heads": 16,
      "intermediate_size": 3072, "image_seq_len": 256, "condition_num_classes": 1000}}}
  assert R.resolve_config(official) == R.RELEASED["rar_b"]
  with pytest.raises(ValueError, match="pos_embed has 18 rows, the config needs at least 34"):
    R.load(PATH, dict(TINY, seq_len=32))
  with pytest.raises(ValueError, match=r"blocks\.blocks\.0\.mlp\.up\.kernel: \[32, 128\] vs expected \[32, 64\]"):
    R.load(PATH, dict(TINY, mlp_ratio=2.0))
  with pytest.raises(ValueError, match="not an official RAR state dict"):
    R.infer_config({"x": np.zeros(1)})


def test_convert_dispatcher_and_round_trip(tmp_path):
  cfg, params = convert.convert("rar", PATH, TINY)
  assert cfg["name"] == "rar"
  convert.save_converted(tmp_path / "r", cfg, params)
  cfg2, params2 = convert.load_converted(tmp_path / "r")
  assert cfg2 == cfg
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params2)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
