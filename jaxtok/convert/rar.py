"""RAR generators (bytedance/1d-tokenizer `modeling/rar.py`, HF yucornetto/RAR rar_{b,l,xl,xxl}.bin)
-> `generators.rar`.

Key map (Linear [O, I] -> kernel [I, O]; LayerNorm weight -> scale; i = layer):
  cls_token [1, 1, W]                        cls_token.embedding [1, W]
  pos_embed [1, N + 1024, W]                 pos_embed.embedding: rows [0, N + 2) (the rest is never
                                             read: 2 prefix slots + N positions)
  target_aware_pos_embed [1, N + 1024, W]    target_aware_pos_embed.embedding: rows [2, N + 2)
                                             (forward reads the table from row 2, the first image
                                             position; rows 0, 1 are unused)
  timesteps_embeddings [1, N + 100, W]       timesteps_embeddings.embedding: rows [0, N + 2)
  embeddings.weight [K + C + 2, W]           embeddings.embedding
  blocks.i.norm1 / norm2                     blocks.blocks.i.norm1 / norm2 (.scale, .bias)
  blocks.i.attn.qkv [3W, W] (+ bias)         blocks.blocks.i.attn.qkv [W, 3, H, E] (+ qkv_bias [3, H, E])
  blocks.i.attn.q_norm / k_norm              blocks.blocks.i.attn.q_norm / k_norm (.scale, .bias)
  blocks.i.attn.proj [W, W] (+ bias)         blocks.blocks.i.attn.out [H, E, W] (+ out_bias)
  blocks.i.mlp.fc1 / fc2                     blocks.blocks.i.mlp.up / down
  blocks.i.adaLN_modulation.1 [6W, W]        blocks.blocks.i.ada [W, 6W], chunks reordered from DiT's
                                             (shift, scale, gate)_msa, (shift, scale, gate)_mlp to
                                             `nn.Block`'s gate_msa, gate_mlp, shift_msa, scale_msa,
                                             shift_mlp, scale_mlp
  adaln_before_head.adaLN_modulation.1       head_ada (chunks (scale, shift) kept: RAR's own order)
  lm_head                                    lm_head
A model built with scan_layers=True takes the same names (`common.fill_state` stacks blocks.i.*).

The head count is not in the tensors: every release has 16 heads (`RELEASED`, transcribed from
README_RAR / configs/training/generator/rar.yaml), which `infer_config` assumes.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

from jaxtok.convert import common
from jaxtok.generators.rar import PREFIX

# DiT's chunk order (official) -> nn.Block's (gate_msa, gate_mlp, shift_msa, scale_msa, shift_mlp,
# scale_mlp): the official chunk index of each of ours.
_ADA_ORDER = (2, 5, 0, 1, 3, 4)


def _rar(width: int, depth: int) -> dict[str, Any]:
  return dict(name="rar", codebook_size=1024, seq_len=256, num_classes=1000, width=width,
              depth=depth, heads=16, mlp_ratio=4.0, class_dropout=0.1, anneal_start=125_000,
              anneal_end=187_500)


# The released sizes (README_RAR.md: hidden/layers, MLP 4x, 16 heads, MaskGIT-VQ 256 tokens of 1024).
RELEASED: dict[str, dict[str, Any]] = {
    "rar_b": _rar(768, 24), "rar_l": _rar(1024, 24), "rar_xl": _rar(1280, 32),
    "rar_xxl": _rar(1408, 40)}
ALIASES = {f"yucornetto/RAR/{n}.bin": n for n in RELEASED}


def from_official(official: Mapping[str, Any]) -> dict[str, Any]:
  """A `generators.rar` config from an official one (model.generator + model.vq_model)."""
  try:
    gen, vq = dict(official["model"]["generator"]), dict(official["model"]["vq_model"])
  except (KeyError, TypeError):
    raise ValueError("an official RAR config needs model.generator and model.vq_model") from None
  width = int(gen["hidden_size"])
  return dict(name="rar", codebook_size=int(vq["codebook_size"]), seq_len=int(gen["image_seq_len"]),
              num_classes=int(gen["condition_num_classes"]), width=width,
              depth=int(gen["num_hidden_layers"]), heads=int(gen["num_attention_heads"]),
              mlp_ratio=int(gen["intermediate_size"]) / width,
              class_dropout=float(gen.get("class_label_dropout", 0.1)),
              anneal_start=int(gen.get("randomness_anneal_start", 125_000)),
              anneal_end=int(gen.get("randomness_anneal_end", 187_500)))


def _table(v: np.ndarray, start: int, stop: int, key: str) -> np.ndarray:
  """Rows [start, stop) of a [1, L, W] table (ValueError naming the key when it is too short)."""
  v = v.reshape(-1, v.shape[-1])
  if v.shape[0] < stop:
    raise ValueError(f"{key} has {v.shape[0]} rows, the config needs at least {stop}")
  return v[start:stop]


def _linear(name: str, kind: str, v: np.ndarray) -> dict[str, np.ndarray]:
  return {f"{name}.kernel": v.T} if kind == "weight" else {f"{name}.bias": v}


def dit_block(pre: str, name: str, kind: str, v: np.ndarray, heads: int) -> dict[str, np.ndarray]:
  """One `blocks.i.<name>.<kind>` tensor -> {jaxtok name: array} (name unchanged when unknown)."""
  if name == "attn.qkv":  # [3W, W] -> [W, 3, H, E]; bias [3W] -> [3, H, E]
    return {pre + "attn.qkv": v.T.reshape(v.shape[1], 3, heads, -1)} if kind == "weight" else {
        pre + "attn.qkv_bias": v.reshape(3, heads, -1)}
  if name == "attn.proj":  # [W_out, W_in] -> [H, E, W_out]
    return {pre + "attn.out": v.T.reshape(heads, -1, v.shape[0])} if kind == "weight" else {
        pre + "attn.out_bias": v}
  if name == "adaLN_modulation.1":  # [6W(, W)]: reorder the six chunks
    chunks = np.split(v, 6, axis=0)
    v = np.concatenate([chunks[i] for i in _ADA_ORDER], axis=0)
    return _linear(pre + "ada", kind, v)
  if name in ("mlp.fc1", "mlp.fc2"):
    return _linear(pre + {"mlp.fc1": "mlp.up", "mlp.fc2": "mlp.down"}[name], kind, v)
  if name in ("norm1", "norm2", "attn.q_norm", "attn.k_norm"):
    return {f"{pre}{name}.{'scale' if kind == 'weight' else 'bias'}": v}
  return {f"{pre}{name}.{kind}": v}  # unexpected: reported by fill_state


def convert(flat: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Official RAR state dict -> {jaxtok parameter name: array} for `config`."""
  n, heads = int(config["seq_len"]), int(config["heads"])
  tables = {"pos_embed": (0, PREFIX + n), "target_aware_pos_embed": (PREFIX, PREFIX + n),
            "timesteps_embeddings": (0, PREFIX + n)}
  out: dict[str, np.ndarray] = {}
  for key, v in flat.items():
    v = np.asarray(v)
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)\.(weight|bias)", key)
    if m:
      out.update(dit_block(f"blocks.blocks.{m.group(1)}.", m.group(2), m.group(3), v, heads))
    elif key in tables:
      out[f"{key}.embedding"] = _table(v, *tables[key], key)
    elif key == "cls_token":
      out["cls_token.embedding"] = v.reshape(1, -1)
    elif key == "embeddings.weight":
      out["embeddings.embedding"] = v
    elif key.startswith("adaln_before_head.adaLN_modulation.1."):
      out.update(_linear("head_ada", key.rsplit(".", 1)[1], v))
    elif key in ("lm_head.weight", "lm_head.bias"):
      out.update(_linear("lm_head", key.rsplit(".", 1)[1], v))
    else:
      out[key] = v  # unexpected: reported by fill_state
  return out


def infer_config(flat: Mapping[str, np.ndarray]) -> dict[str, Any]:
  """A config read off the shapes, assuming the released 16 heads and annealing steps; prefer a
  RELEASED name or an official config."""
  if "target_aware_pos_embed" not in flat or "lm_head.weight" not in flat:
    raise ValueError("not an official RAR state dict (no target_aware_pos_embed / lm_head.weight); "
                     f"keys start with {sorted({k.split('.')[0] for k in flat})}")
  k, width = (int(d) for d in flat["lm_head.weight"].shape)
  depth = len({key.split(".")[1] for key in flat if key.startswith("blocks.")})
  seq = int(flat["timesteps_embeddings"].shape[1]) - 100  # the release's N + 100 rows
  return dict(_rar(width, depth), codebook_size=k, seq_len=seq,
              num_classes=int(flat["embeddings.weight"].shape[0]) - k - 2,
              mlp_ratio=int(flat["blocks.0.mlp.fc1.weight"].shape[0]) / width)


# resolve_config(config, flat=None), abstract_params(config), build(config, params=None) and
# load(path, config=None) -> (config, nnx.State of a `generators.rar.RAR`): see
# common.GeneratorConverter (a config not given is read off the shapes, assuming 16 heads).
_API = common.GeneratorConverter(
    "jaxtok.generators.rar", "rar", released=RELEASED, aliases=ALIASES, infer=infer_config,
    from_official=from_official, convert=convert)
resolve_config, abstract_params, build, load = (
    _API.resolve_config, _API.abstract_params, _API.build, _API.load)
