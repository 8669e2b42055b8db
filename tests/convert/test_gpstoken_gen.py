"""GPSToken's released generator (xtudbxk/GPSToken `models/sit_models.py`, SiT-XL/2-gs) converted to
`generators.gpstoken_gen`: parity with the official PyTorch SiT, the AdaLN chunk order, size checks,
the layout bank (initg.pickle), and tools/convert.py -> tools/sample.py.

tests/fixtures/official/gpstoken_gen_tiny.safetensors: a tiny re-randomised official SiT-gs (width
32, 2 blocks, 2 heads, 16 tokens of 21 channels, 10 classes, learn_sigma) under the release's
"ema_model." prefix; gpstoken_gen_tiny_io.npz: its forward and forward_with_cfg outputs (see
make_gpstoken_gen_fixture.py.txt).
"""
import collections
import functools
import json
import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtok.convert import common
from jaxtok.convert import gpstoken_gen as C
from jaxtok.generators import gpstoken_gen as G

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "official")
PATH = os.path.join(FIXTURES, "gpstoken_gen_tiny.safetensors")
TOL = 1e-4
TINY = dict(name="gpstoken_gen", token_dim=21, seq_len=16, num_classes=10, width=32, depth=2,
            heads=2, mlp_ratio=4.0, class_dropout=0.1, learn_sigma=True, stats="released")


@functools.lru_cache(maxsize=None)
def _io():
  with np.load(os.path.join(FIXTURES, "gpstoken_gen_tiny_io.npz")) as f:
    return {k: f[k] for k in f.files}


@functools.lru_cache(maxsize=None)
def _flat():
  return common.read_checkpoint(PATH)[0]


@functools.lru_cache(maxsize=None)
def _model():
  cfg, params = C.load(PATH, TINY)
  return C.build(cfg, params)


def _err(a, b):
  return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


def test_velocity_matches_official_forward():
  io = _io()
  labels = np.where(io["y"] == 10, -1, io["y"])  # the official null id is num_classes
  v = _model().velocity(jnp.asarray(io["x"]), jnp.asarray(io["t"]), jnp.asarray(labels),
                        jnp.asarray(io["cond"]))
  assert v.shape == (2, 16, 21)
  assert _err(v, io["out"]) < TOL
  assert float(np.abs(io["out"]).max()) > 1.0  # re-randomised: the output is far from adaLN-zero's 0


def test_guided_velocity_matches_forward_with_cfg_inside_and_outside_the_interval():
  io = _io()
  fn = G.guided_velocity(_model(), jnp.asarray(io["labels_cfg"]), jnp.asarray(io["cond"]),
                         cfg_scale=1.5, guidance_low=0.2, guidance_high=1.0)
  x = jnp.asarray(io["x"])
  assert _err(fn(x, jnp.float32(0.6)), io["cfg_06"]) < TOL
  assert _err(fn(x, jnp.float32(0.1)), io["cfg_01"]) < TOL
  # Not degenerate: guidance changes the velocity at 0.6 (compare with the conditional one).
  cond = G.guided_velocity(_model(), jnp.asarray(io["labels_cfg"]), jnp.asarray(io["cond"]))
  assert _err(cond(x, jnp.float32(0.6)), io["cfg_06"]) > 100 * TOL


def test_adaln_chunks_reordered_and_final_layer_kept():
  flat, model, w = C.ema_weights(_flat()), _model(), 32
  official = np.asarray(flat["blocks.1.adaLN_modulation.1.weight"], np.float32)  # [6W, W]
  ours = np.asarray(model.blocks.blocks[1].ada.kernel[...])  # [W, 6W]
  # SiT: (shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp); nn.Block: (gate_msa,
  # gate_mlp, shift_msa, scale_msa, shift_mlp, scale_mlp).
  for ours_i, sit_i in enumerate((2, 5, 0, 1, 3, 4)):
    np.testing.assert_array_equal(ours[:, ours_i * w:(ours_i + 1) * w],
                                  official[sit_i * w:(sit_i + 1) * w].T)
  bias = np.asarray(flat["blocks.1.adaLN_modulation.1.bias"], np.float32)
  np.testing.assert_array_equal(np.asarray(model.blocks.blocks[1].ada.bias[...])[:w], bias[2 * w:3 * w])
  np.testing.assert_array_equal(np.asarray(model.final_ada.kernel[...]),
                                np.asarray(flat["final_layer.adaLN_modulation.1.weight"], np.float32).T)
  qkv = np.asarray(flat["blocks.0.attn.qkv.weight"], np.float32)  # rows: (3, H, E)
  np.testing.assert_array_equal(np.asarray(model.blocks.blocks[0].attn.qkv[...])[:, 1, 1],
                                qkv[48:64].T)  # k of head 1


def test_scan_layers_stack_the_same_weights():
  io = _io()
  cfg, params = C.load(PATH, dict(TINY, scan_layers=True))
  model = C.build(cfg, params)
  args = (jnp.asarray(io["x"]), jnp.asarray(io["t"]), jnp.asarray([3, -1]), jnp.asarray(io["cond"]))
  assert _err(jax.jit(lambda *a: model.velocity(*a))(*args), io["out"]) < TOL


def test_sizes_read_and_checked_against_the_config():
  flat = C.ema_weights(_flat())
  assert C.sizes(flat) == dict(token_dim=21, width=32, depth=2, num_classes=10, mlp_ratio=4.0,
                               learn_sigma=True, seq_len=16)
  with pytest.raises(ValueError, match="head count.*width 32"):  # 32 is no SiT size
    C.infer_config(_flat())
  with pytest.raises(ValueError, match=r"y_embedder\.embedding_table\.weight.*num_classes = 10.*12"):
    C.load(PATH, dict(TINY, num_classes=12))
  with pytest.raises(ValueError, match=r"pos_embed.*seq_len = 16.*128"):
    C.load(PATH, dict(TINY, seq_len=128))
  with pytest.raises(ValueError, match="heads must divide the width 32, got 3"):
    C.convert(flat, dict(TINY, heads=3))
  with pytest.raises(ValueError, match=r"cond_embedder\.0\.weight"):
    C.convert({k: v for k, v in flat.items() if k != "cond_embedder.0.weight"}, TINY)
  with pytest.raises(ValueError, match=r"blocks\.0\.attn\.extra"):  # unknown tensors: refused by name
    common.fill_state(C.abstract_params(TINY), C.convert(
        dict(flat, **{"blocks.0.attn.extra.weight": np.zeros((2,), np.float32)}), TINY))


def test_only_ema_weights_are_read():
  flat = dict(_flat())
  # A non-EMA copy beside the EMA one (the release's file layout) is ignored, as the release does.
  flat["model.blocks.0.attn.qkv.weight"] = np.zeros((96, 32), np.float32)
  ours = C.convert(flat, TINY)
  assert not any(k.startswith(("model.", "ema_model.")) for k in ours)
  np.testing.assert_array_equal(ours["blocks.blocks.0.attn.qkv"],
                                C.convert(_flat(), TINY)["blocks.blocks.0.attn.qkv"])
  plain = C.ema_weights(_flat())  # unprefixed: taken as a plain SiT state dict
  assert C.ema_weights(plain) == plain


def _release_shapes():
  """Zero-stride stand-ins with the shapes SiT-XL/2-gs has in configs/gpstoken_generator.yaml."""
  w, d, s = 1152, 21, 128
  shapes = {"pos_embed": (1, s, w), "x_embedder.proj.weight": (w, d, 1, 1),
            "x_embedder.proj.bias": (w,), "y_embedder.embedding_table.weight": (1001, w),
            "cond_embedder.0.weight": (w, 5), "final_layer.linear.weight": (2 * d, w)}
  shapes.update({f"blocks.{i}.mlp.fc1.weight": (4 * w, w) for i in range(28)})
  return {f"ema_model.{k}": np.broadcast_to(np.float32(0), v) for k, v in shapes.items()}


def test_release_sizes_from_shapes_and_official_config():
  assert C.infer_config(_release_shapes()) == C.RELEASED["gpstoken_gen_xl"]
  official = {"model": {"name": "SiT-XL/2-gs", "latent_size": 128, "num_classes": 1000,
                        "in_channels": 21}}  # configs/gpstoken_generator.yaml
  assert C.resolve_config(official) == C.RELEASED["gpstoken_gen_xl"]
  assert C.resolve_config("generator.safetensors") == C.RELEASED["gpstoken_gen_xl"]
  with pytest.raises(ValueError, match="model.name"):
    C.from_official({"model": {"name": "SiT-XL/2"}})


class _Evil:
  def __reduce__(self):
    return (os.getcwd, ())


def test_initg_bank_pops_like_the_release(tmp_path):
  rng = np.random.default_rng(0)
  a, b, c = (rng.normal(size=(16, 21)) for _ in range(3))  # float64, 5 + 16 channels as released
  path = tmp_path / "initg.pickle"
  path.write_bytes(pickle.dumps({7: [a, b], 3: [c]}))
  layouts, labels = C.bank_arrays(C.read_initg(path), TINY)
  np.testing.assert_array_equal(labels, [3, 7, 7])
  assert layouts.dtype == np.float32 and layouts.shape == (3, 16, 5)
  np.testing.assert_array_equal(layouts[1], a[:, :5].astype(np.float32))
  bank = G.LayoutBank(layouts, labels, G.RELEASED_MEAN, G.RELEASED_STD, 10)
  # The release's ginit_data[7].pop(): b, then a.
  np.testing.assert_array_equal(bank.pop(7), b[:, :5].astype(np.float32))
  np.testing.assert_array_equal(bank.pop(7), a[:, :5].astype(np.float32))
  with pytest.raises(ValueError, match=r"initg\[3\]\[0\] must be \[8, >= 5\]"):
    C.bank_arrays({3: [c]}, dict(TINY, seq_len=8))
  grouped = collections.defaultdict(list)  # another way to build such a file
  grouped[3].append(c)
  path.write_bytes(pickle.dumps(grouped))
  np.testing.assert_array_equal(C.read_initg(path)[3][0], c)
  path.write_bytes(pickle.dumps({0: [_Evil()]}))
  with pytest.raises(ValueError, match="refusing global"):
    C.read_initg(path)


@pytest.mark.slow
def test_convert_tool_then_sample_tool_writes_images(tmp_path):
  """tools/convert.py --model gpstoken_gen --initg on the fixture, then tools/sample.py on the output
  with a random tiny GPSToken tokenizer (16 Gaussians, 16 texture channels): the tool's tokens are
  the converted model's samples from the layouts the release would pop."""
  from jaxtok.configs import gpstoken
  from jaxtok.tokenizers import api
  from tests.convert.test_tool import _run_tool
  from tests.tools.conftest import load_tool, random_like, save_train_checkpoint
  rng = np.random.default_rng(1)
  initg = {c: [np.concatenate([rng.uniform(0.05, 0.5, (16, 2)), rng.uniform(-0.5, 0.5, (16, 3)),
                               rng.normal(size=(16, 16))], -1) for _ in range(2)] for c in (3, 7)}
  (tmp_path / "initg.pickle").write_bytes(pickle.dumps(initg))
  out = str(tmp_path / "converted")
  _run_tool("--model=gpstoken_gen", f"--weights={PATH}", f"--out={out}",
            f"--initg={tmp_path / 'initg.pickle'}", "--config=" + json.dumps(TINY))
  assert np.load(os.path.join(out, "layouts.npy")).shape == (4, 16, 5)

  config = gpstoken.get_config("tiny")
  config.model.update(num_gaussians=16, feature_dim=16)
  tok = str(tmp_path / "tokenizer")
  save_train_checkpoint(tok, {"step": jnp.int32(1), "params": random_like(
      api.build(config.model).abstract_params(), seed=0, scale=0.2)}, config)
  res = load_tool("sample").main([
      "sample", f"--workdir={out}", f"--tokenizer_checkpoint={tok}", f"--out={tmp_path / 's'}",
      "--num_samples=3", "--batch_size=2", "--labels=3,-1", "--steps=4", "--cfg_scale=1.5"])
  assert res["tokens"].shape == (3, 16, 21) and np.isfinite(res["tokens"]).all()
  assert res["images"].shape == (3, 16, 16, 3) and res["images"].dtype == np.uint8
  assert os.path.exists(tmp_path / "s" / "images" / "00002.png")
  # The first batch (labels 3, -1) by hand: class 3's last initg layout, then the whole bank's last.
  bank = G.LayoutBank(*C.bank_arrays(initg, TINY), G.RELEASED_MEAN, G.RELEASED_STD, 10)
  lab = bank.labels(np.asarray([3, -1], np.int32))
  np.testing.assert_array_equal(lab["layout"][0], initg[3][1][:, :5].astype(np.float32))
  np.testing.assert_array_equal(lab["layout"][1], initg[7][1][:, :5].astype(np.float32))
  want = G.sample(_model(), jax.random.fold_in(jax.random.key(0), 0), lab["label"], lab["layout"],
                  lab["mean"], lab["std"], steps=4, cfg_scale=1.5, guidance_low=0.2, guidance_high=1.0)
  np.testing.assert_allclose(res["tokens"][:2], np.asarray(want), atol=1e-4, rtol=1e-4)
