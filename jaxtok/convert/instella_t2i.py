"""Instella-T2I's released generators (`diffusion.pt`, `ar.pt`) -> `generators.instella_diff` /
`generators.instella_ar`.

The release (HF amd/Instella-T2I; code vendored in sprintml/BitMark `Instella-T2I/`) loads them with
`torch.load(path)['module']` (DeepSpeed's layout); `common.read_checkpoint` reads them
weights_only and unwraps "module"; safetensors files work too. Key map (Linear weight [O, I] ->
kernel [I, O]; i = block; W width, H heads, E head dim):

  x_embedder                            x_embed
  time_embed.linear_1 / linear_2        time_1 / time_2          (diffusion; the AR model's unused
                                                                  time_embed.* are dropped)
  split_token [1, 1, W]                 split [W]                (AR)
  transformer_blocks.i.attn.q/k/v_proj  layers.i.block.attn.qkv [W, 3, H, E]   (no biases)
  transformer_blocks.i.attn.o_proj      layers.i.block.attn.out [H, E, W]
  transformer_blocks.i.attn.norm_q/k    layers.i.block.attn.q_norm / k_norm .scale [E]
  transformer_blocks.i.norm1.linear     layers.i.block.ada [W, 6W], the six chunks reordered from
                                        diffusers' (shift, scale, gate)_msa, (shift, scale, gate)_mlp
                                        to `nn.Block`'s (gate_msa, gate_mlp, shift_msa, scale_msa,
                                        shift_mlp, scale_mlp)                (diffusion)
  transformer_blocks.i.input_layernorm / post_attention_layernorm
                                        layers.i.block.norm1 / norm2 .scale   (AR)
  transformer_blocks.i.ff / mlp .net.0.proj, .net.2
                                        layers.i.block.mlp.up / down
  transformer_blocks.i.proj_cond        layers.i.proj_cond
  transformer_blocks.i.pos_emb [1, P, W] layers.i.pos [P, W]
  norm_out.linear [2W, W]               out_ada (diffusers' (scale, shift) = the split order used)
  norm_out.weight                       norm_out.scale            (AR)
  proj_out                              proj_out

Sizes are read off the shapes: bits n (x_embedder), width W, depth (blocks), heads W / E (norm_q),
seq_len N (pos_emb: N, or N + 1 for the AR model), text_dim (proj_cond). The full release: n 64,
N 128, W 2048, 16 layers of 16 heads, text_dim 2048 (`RELEASED`).
"""
from __future__ import annotations

import os
import re
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np

from jaxtok.convert import common

# diffusers AdaLayerNormZero chunk order -> nn.Block's: chunk j of ours is chunk _ADA[j] of theirs.
_ADA = (2, 5, 0, 1, 3, 4)
_FULL = dict(num_bits=64, seq_len=128, text_dim=2048, width=2048, depth=16, heads=16)
RELEASED = {"instella_diff": dict(_FULL, name="instella_diff"),
            "instella_ar": dict(_FULL, name="instella_ar")}
ALIASES = {"diffusion.pt": "instella_diff", "ar.pt": "instella_ar"}
_BLOCK = re.compile(r"transformer_blocks\.(\d+)\.(.+)")


def _shape(x) -> tuple[int, ...]:
  """The shape of an array or of a jax.ShapeDtypeStruct (the shapes-only conversion)."""
  return tuple(int(d) for d in x.shape)


def _dense(out: dict, name: str, flat: Mapping[str, Any], key: str) -> None:
  out[f"{name}.kernel"] = jnp.asarray(flat[f"{key}.weight"]).T
  if f"{key}.bias" in flat:
    out[f"{name}.bias"] = jnp.asarray(flat[f"{key}.bias"])


def _heads(flat: Mapping[str, Any]) -> int:
  width = _shape(flat["x_embedder.weight"])[0]
  return width // _shape(flat["transformer_blocks.0.attn.norm_q.weight"])[0]


def _layer(flat: Mapping[str, Any], i: int, heads: int, ar: bool) -> dict:
  src, dst = f"transformer_blocks.{i}", f"layers.{i}"
  out: dict = {}
  q, k, v = (jnp.asarray(flat[f"{src}.attn.{p}_proj.weight"]) for p in "qkv")
  w = q.shape[1]
  out[f"{dst}.block.attn.qkv"] = jnp.stack([q.T, k.T, v.T], axis=1).reshape(w, 3, heads, -1)
  out[f"{dst}.block.attn.out"] = jnp.asarray(flat[f"{src}.attn.o_proj.weight"]).T.reshape(
      heads, -1, w)
  out[f"{dst}.block.attn.q_norm.scale"] = jnp.asarray(flat[f"{src}.attn.norm_q.weight"])
  out[f"{dst}.block.attn.k_norm.scale"] = jnp.asarray(flat[f"{src}.attn.norm_k.weight"])
  ff = "mlp" if ar else "ff"
  _dense(out, f"{dst}.block.mlp.up", flat, f"{src}.{ff}.net.0.proj")
  _dense(out, f"{dst}.block.mlp.down", flat, f"{src}.{ff}.net.2")
  _dense(out, f"{dst}.proj_cond", flat, f"{src}.proj_cond")
  out[f"{dst}.pos"] = jnp.asarray(flat[f"{src}.pos_emb"])[0]
  if ar:
    out[f"{dst}.block.norm1.scale"] = jnp.asarray(flat[f"{src}.input_layernorm.weight"])
    out[f"{dst}.block.norm2.scale"] = jnp.asarray(flat[f"{src}.post_attention_layernorm.weight"])
  else:
    wt = jnp.asarray(flat[f"{src}.norm1.linear.weight"]).reshape(6, w, w)
    bias = jnp.asarray(flat[f"{src}.norm1.linear.bias"]).reshape(6, w)
    order = np.asarray(_ADA)
    out[f"{dst}.block.ada.kernel"] = wt[order].reshape(6 * w, w).T
    out[f"{dst}.block.ada.bias"] = bias[order].reshape(6 * w)
  return out


def _depth(flat: Mapping[str, Any]) -> int:
  return len({int(m.group(1)) for k in flat if (m := _BLOCK.match(k))})


def convert(flat: Mapping[str, Any], config: Mapping[str, Any]) -> dict:
  """jaxtok names -> arrays of a release state dict (module docstring); config["name"] picks the
  model. Works on numpy arrays and, under `jax.eval_shape`, on shapes alone."""
  ar = config["name"] == "instella_ar"
  heads = _heads(flat)
  out: dict = {}
  _dense(out, "x_embed", flat, "x_embedder")
  _dense(out, "proj_out", flat, "proj_out")
  if ar:
    out["split"] = jnp.asarray(flat["split_token"]).reshape(-1)
    out["norm_out.scale"] = jnp.asarray(flat["norm_out.weight"])
  else:
    _dense(out, "time_1", flat, "time_embed.linear_1")
    _dense(out, "time_2", flat, "time_embed.linear_2")
    _dense(out, "out_ada", flat, "norm_out.linear")
  for i in range(_depth(flat)):
    out.update(_layer(flat, i, heads, ar))
  return out


def _released_keys(flat: Mapping[str, Any], ar: bool) -> dict:
  """flat without the AR model's unused time_embed.* (the release builds it and never calls it)."""
  return {k: v for k, v in flat.items() if not (ar and k.startswith("time_embed."))}


def infer_config(flat: Mapping[str, Any], name: str) -> dict[str, Any]:
  """The config the shapes show (module docstring); ValueError for a file that is not the named
  model's state dict."""
  ar = name == "instella_ar"
  needed = ("x_embedder.weight", "transformer_blocks.0.attn.norm_q.weight",
            "transformer_blocks.0.pos_emb", "transformer_blocks.0.proj_cond.weight",
            "split_token" if ar else "time_embed.linear_1.weight")
  missing = [k for k in needed if k not in flat]
  if missing:
    raise ValueError(f"not an Instella-T2I {'AR' if ar else 'diffusion'} state dict: missing "
                     f"{missing}; keys start with {sorted({k.split('.')[0] for k in flat})}")
  width, num_bits = (int(d) for d in _shape(flat["x_embedder.weight"]))
  positions = int(_shape(flat["transformer_blocks.0.pos_emb"])[1])
  return dict(name=name, num_bits=num_bits, seq_len=positions - 1 if ar else positions,
              text_dim=int(_shape(flat["transformer_blocks.0.proj_cond.weight"])[1]),
              width=width, depth=_depth(flat), heads=_heads(flat))


def _no_official_config(official: Mapping[str, Any]) -> dict:
  raise ValueError(f"the release has no config file for its generators (the sizes are in its "
                   f"test_*.py); pass None (read off the shapes), a released name ({sorted(RELEASED)}) "
                   f"or a jaxtok config, got keys {sorted(official)}")


def _make(name: str) -> common.GeneratorConverter:
  ar = name == "instella_ar"
  return common.GeneratorConverter(
      f"jaxtok.generators.{name}", name, released=RELEASED, aliases=ALIASES,
      infer=lambda flat: infer_config(_released_keys(flat, ar), name),
      from_official=_no_official_config,
      convert=lambda flat, cfg: convert(_released_keys(flat, ar), cfg))


CONVERTERS = {name: _make(name) for name in RELEASED}


def load(path: str | os.PathLike, config: Any = None, *, model: str = "instella_diff"):
  """(jaxtok config, nnx.State) of a released `diffusion.pt` (model "instella_diff") or `ar.pt`
  ("instella_ar"), or the same state dict as safetensors. config: None (read off the shapes), a
  RELEASED name or file alias, or a jaxtok config. ValueError naming every missing, unexpected or
  mis-shaped tensor."""
  if model not in CONVERTERS:
    raise ValueError(f"model must be one of {sorted(CONVERTERS)}, got {model!r}")
  return CONVERTERS[model].load(path, config)
