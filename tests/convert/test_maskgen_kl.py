"""MaskGen-KL converter: parity of the backbone conditions z and of the diffusion head's outputs
with numpy forwards of the official model on a tiny random state dict of the official layout.

The numpy reference is written here from bytedance/1d-tokenizer modeling/maskgen.py (MaskGen_KL:
forward_mae_decoder, get_sinusoidal_encoding) and modeling/modules/blocks.py (SimpleMLPAdaLN,
TimestepEmbedder, ResBlock, FinalLayer); the MM-DiT blocks are MaskGen-VQ's numpy blocks
(tests/generators/test_maskgen.py), whose official tensors this state dict reuses.
"""
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from jaxtok.convert import maskgen_kl as C
from tests.generators.test_maskgen import _ln, _silu, joint_blocks, official_state as vq_state

W, HEADS, DEPTH, K, D, TEXT, MICRO, T, HW, HD = 16, 2, 2, 6, 4, 8, 4, 5, 12, 2
CONFIG = dict(name="maskgen_kl", token_dim=D, seq_len=K, width=W, depth=DEPTH, heads=HEADS,
              text_dim=TEXT, micro_condition=True, micro_condition_dim=MICRO, head_width=HW,
              head_depth=HD, scale_factor=0.7525)


def official_state(seed=0, *, text=TEXT, k=K, d=D):
  """A tiny random MaskGen_KL state dict (official names and layouts)."""
  TEXT, K, D = text, k, d  # pylint: disable=invalid-name
  rng = np.random.default_rng(seed + 100)
  n = lambda *s: rng.normal(0, 0.3, s).astype(np.float32)
  lin = lambda name, o, i: {f"{name}.weight": n(o, i), f"{name}.bias": n(o)}
  sd = {"decoder_" + k: v for k, v in vq_state(seed, DEPTH, width=W, text=TEXT, micro=MICRO, k=K).items()
        if k.startswith("blocks.")}
  for name, o, i in (("text_emb", W, TEXT), ("text_pooled_emb", W, TEXT + MICRO), ("z_proj", W, D),
                     ("decoder_norm.linear", 2 * W, W)):
    sd.update(lin(name, o, i))
  sd.update({"z_proj_ln.weight": 1 + n(W), "z_proj_ln.bias": n(W), "mask_token": n(1, 1, W),
             "decoder_pos_embed_learned": n(1, K, W), "diffusion_pos_embed_learned": n(1, K, W)})
  h = "diffloss.net."
  for name, o, i in (("input_proj", HW, D), ("time_embed.mlp.0", HW, 256),
                     ("time_embed.mlp.2", HW, HW), ("cond_embed", HW, W),
                     ("final_layer.adaLN_modulation.1", 2 * HW, HW),
                     ("final_layer.linear", 2 * D, HW)):
    sd.update(lin(h + name, o, i))
  for j in range(HD):
    r = f"{h}res_blocks.{j}."
    sd.update({r + "in_ln.weight": 1 + n(HW), r + "in_ln.bias": n(HW)})
    for name, o in (("mlp.0", HW), ("mlp.2", HW), ("adaLN_modulation.1", 3 * HW)):
      sd.update(lin(r + name, o, HW))
  return sd


def _lin(sd, name, x):
  return x @ sd[name + ".weight"].T + sd[name + ".bias"]


def reference_condition(sd, x, mask, text, pooled, aes):
  """numpy float64 MaskGen_KL.forward_mae_decoder (with its condition projections) -> z [B, K, W]."""
  sd = {k: np.asarray(v, np.float64) for k, v in sd.items()}
  h = _ln(_lin(sd, "z_proj", x)) * sd["z_proj_ln.weight"] + sd["z_proj_ln.bias"]
  h = np.where(mask[..., None], sd["mask_token"][0], h) + sd["decoder_pos_embed_learned"][0]
  c = _lin(sd, "text_emb", text)
  micro = np.zeros((len(aes), MICRO))
  arg = (aes * 100)[:, None] * np.power(10000.0, -np.arange(0, MICRO, 2) / MICRO)
  micro[:, 0::2], micro[:, 1::2] = np.sin(arg), np.cos(arg)
  p = _lin(sd, "text_pooled_emb", np.concatenate([pooled, micro], -1))
  h = joint_blocks(sd, h, c, p, DEPTH, HEADS, prefix="decoder_blocks")
  scale, shift = np.split(_lin(sd, "decoder_norm.linear", _silu(p)), 2, -1)
  return _ln(h) * (1 + scale[:, None]) + shift[:, None] + sd["diffusion_pos_embed_learned"][0]


def reference_head(sd, x, t, z):
  """numpy float64 SimpleMLPAdaLN.forward(x, t, c=z) -> [M, 2D]."""
  sd = {k[len("diffloss.net."):]: np.asarray(v, np.float64) for k, v in sd.items()
        if k.startswith("diffloss.net.")}
  freqs = np.exp(-np.log(10000.0) * np.arange(128) / 128)
  arg = np.asarray(t, np.float64)[:, None] * freqs
  temb = _lin(sd, "time_embed.mlp.2", _silu(_lin(sd, "time_embed.mlp.0",
                                                  np.concatenate([np.cos(arg), np.sin(arg)], -1))))
  y = temb + _lin(sd, "cond_embed", z)
  h = _lin(sd, "input_proj", x)
  for j in range(HD):
    r = f"res_blocks.{j}."
    shift, scale, gate = np.split(_lin(sd, r + "adaLN_modulation.1", _silu(y)), 3, -1)
    u = (_ln(h) * sd[r + "in_ln.weight"] + sd[r + "in_ln.bias"]) * (1 + scale) + shift
    h = h + gate * _lin(sd, r + "mlp.2", _silu(_lin(sd, r + "mlp.0", u)))
  shift, scale = np.split(_lin(sd, "final_layer.adaLN_modulation.1", _silu(y)), 2, -1)
  return _lin(sd, "final_layer.linear", _ln(h) * (1 + scale) + shift)


@functools.lru_cache(maxsize=None)
def _converted():
  sd = official_state()
  path = f"/tmp/jaxtok_test_maskgen_kl_{os.getpid()}.safetensors"
  save_file(sd, path)
  try:
    cfg, params = C.load(path, dict(CONFIG))
  finally:
    os.remove(path)
  return sd, cfg, C.build(cfg, params)


def test_converted_maskgen_kl_matches_the_official_forward_and_head():
  sd, cfg, model = _converted()
  assert cfg["name"] == "maskgen_kl"
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, K, D)).astype(np.float32)
  mask = rng.random((2, K)) < 0.5
  text = rng.normal(size=(2, T, TEXT)).astype(np.float32)
  pooled = rng.normal(size=(2, TEXT)).astype(np.float32)
  aes = np.asarray([6.5, 5.0], np.float32)
  z = jax.jit(lambda m, *a: m.condition(a[0], a[1], {"text": a[2], "pooled": a[3], "aesthetic": a[4]}))(
      model, *(jnp.asarray(a) for a in (x, mask, text, pooled, aes)))
  want = reference_condition(sd, x.astype(np.float64), mask, text.astype(np.float64),
                             pooled.astype(np.float64), aes.astype(np.float64))
  assert z.shape == (2, K, W) and z.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(z), want, atol=1e-4)
  xt = rng.normal(size=(5, D)).astype(np.float32)
  t = np.asarray([0, 1, 250, 500, 999], np.int32)
  zz = rng.normal(size=(5, W)).astype(np.float32)
  out = jax.jit(lambda m, a, b, c: m.head_fn(a, b, c))(model, jnp.asarray(xt), jnp.asarray(t),
                                                        jnp.asarray(zz))
  assert out.shape == (5, 2 * D)
  np.testing.assert_allclose(np.asarray(out), reference_head(sd, xt, t, zz), atol=1e-4)


def test_inferred_config_released_names_and_refusals(tmp_path):
  sd = official_state()
  cfg = C.infer_config(sd)
  assert {k: cfg[k] for k in ("token_dim", "seq_len", "width", "depth", "text_dim",
                              "micro_condition_dim", "head_width", "head_depth")} == dict(
      token_dim=D, seq_len=K, width=W, depth=DEPTH, text_dim=TEXT, micro_condition_dim=MICRO,
      head_width=HW, head_depth=HD)
  xl = C.resolve_config("generator_maskgen_kl_xl")
  assert (xl["width"], xl["depth"], xl["head_width"], xl["head_depth"], xl["scale_factor"]) == (
      1280, 20, 1280, 8, 0.7525)
  with pytest.raises(ValueError, match=r"not an official MaskGen-KL state dict: missing \['z_proj"):
    C.infer_config({k: v for k, v in sd.items() if not k.startswith("z_proj.")})
  del sd["diffloss.net.res_blocks.1.mlp.2.bias"]
  path = tmp_path / "bad.safetensors"
  save_file(sd, str(path))
  with pytest.raises(ValueError, match=r"missing keys \[head.blocks.1.fc2.bias\]"):
    C.load(path, dict(CONFIG))
