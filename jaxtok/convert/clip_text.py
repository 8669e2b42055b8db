"""Official CLIP text-tower weights -> jaxtok `nn.clip_text.CLIPText` parameters.

Two layouts, told apart by their keys (the vision tower, logit_scale and buffers are dropped):

open_clip / OpenAI CLIP (`ViT-L-14-336` "openai", what TA-TiTok and MaskGen load; a CustomTextCLIP's
"text." prefix is removed first):
  token_embedding.weight [V, W]                        token_embedding
  positional_embedding [T, W]                          positional_embedding
  transformer.resblocks.i.ln_1 / ln_2                  transformer.blocks.i.norm1 / norm2 (.scale)
  transformer.resblocks.i.attn.in_proj_weight [3W, W]  ... attn.qkv [W, 3, H, E] (+ bias [3, H, E])
  transformer.resblocks.i.attn.out_proj [W, W]         ... attn.out [H, E, W] (+ out_bias)
  transformer.resblocks.i.mlp.c_fc / c_proj            ... mlp.up / mlp.down (kernel = weight.T)
  ln_final                                             ln_final
  text_projection [W, D] (used as x @ P)               text_projection (as is)
HF transformers (`CLIPModel` / `CLIPTextModelWithProjection`):
  text_model.embeddings.token_embedding / position_embedding .weight
  text_model.encoder.layers.i.self_attn.{q,k,v}_proj   -> stacked in q, k, v order into attn.qkv
  text_model.encoder.layers.i.self_attn.out_proj       -> attn.out
  text_model.encoder.layers.i.layer_norm1 / 2, mlp.fc1 / fc2, text_model.final_layer_norm
  text_projection.weight [D, W] (a Linear)             -> text_projection = weight.T

Not visible in the shapes: the head count (width / 64, as every open_clip / OpenAI text tower:
512 -> 8, 768 -> 12, 1024 -> 16) and the activation (QuickGELU for OpenAI's weights, the
default; pass {"activation": "gelu"} for open_clip-trained ones). Any other key is an error.
"""
from __future__ import annotations

import os
import re
from typing import Any, Mapping

import numpy as np

from jaxtok.convert import common
from jaxtok.convert.titok import _vit

HEAD_WIDTH = 64  # open_clip's text towers: heads = width / 64 (512 -> 8, 768 -> 12, 1024 -> 16)
_DROP = re.compile(r"(visual\.|vision_model\.|visual_projection|logit_scale|logit_bias|"
                   r"input_resolution|context_length|vocab_size|attn_mask|"
                   r"text_model\.embeddings\.position_ids)")
_HF_BLOCK = re.compile(r"text_model\.encoder\.layers\.(\d+)\.(.+)$")
_HF_NAMES = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc",
             "mlp.fc2": "mlp.c_proj", "self_attn.out_proj": "attn.out_proj"}


def _from_hf(flat: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """HF names -> the open_clip names (q, k, v projections fused into in_proj in that order)."""
  out: dict[str, np.ndarray] = {}
  qkv: dict[tuple[str, str], dict[str, np.ndarray]] = {}
  plain = {"text_model.embeddings.token_embedding.weight": "token_embedding.weight",
           "text_model.embeddings.position_embedding.weight": "positional_embedding",
           "text_model.final_layer_norm.weight": "ln_final.weight",
           "text_model.final_layer_norm.bias": "ln_final.bias"}
  for key, v in flat.items():
    if key in plain:
      out[plain[key]] = v
    elif key == "text_projection.weight":
      out["text_projection"] = np.asarray(v).T
    elif (m := _HF_BLOCK.match(key)) is not None:
      i, rest = m.groups()
      module, _, kind = rest.rpartition(".")
      if module in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
        qkv.setdefault((i, kind), {})[module[10]] = np.asarray(v)
      else:
        out[f"transformer.resblocks.{i}.{_HF_NAMES.get(module, module)}.{kind}"] = v
    else:
      out[key] = v  # unknown: reported by the shape check
  for (i, kind), parts in qkv.items():
    if sorted(parts) != ["k", "q", "v"]:
      raise ValueError(f"HF CLIP layer {i}: self_attn needs q_proj, k_proj and v_proj .{kind}, "
                       f"got {sorted(parts)}")
    name = "in_proj_weight" if kind == "weight" else "in_proj_bias"
    out[f"transformer.resblocks.{i}.attn.{name}"] = np.concatenate([parts[c] for c in "qkv"])
  return out


def official_tensors(flat: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The text tower's tensors in open_clip names, whatever the layout (vision tower and buffers
  dropped, a "text." prefix removed, HF names translated)."""
  flat = {k: np.asarray(v) for k, v in flat.items() if not _DROP.match(k)}
  if any(k.startswith("text.") for k in flat):
    flat = {k[len("text."):] if k.startswith("text.") else k: v for k, v in flat.items()}
  if any(k.startswith("text_model.") for k in flat):
    flat = _from_hf(flat)
  return flat


def infer_config(flat: Mapping[str, np.ndarray], num_heads: int | None = None) -> dict[str, Any]:
  """A CLIPText config read off open_clip-named tensors (heads: `num_heads`, else width / 64;
  QuickGELU)."""
  need = ("token_embedding.weight", "positional_embedding", "text_projection")
  missing = [k for k in need if k not in flat]
  if missing:
    raise ValueError(f"not a CLIP text state dict: missing {missing} (keys start with "
                     f"{sorted({k.split('.')[0] for k in flat})[:10]})")
  vocab, width = flat["token_embedding.weight"].shape
  if num_heads is None and width % HEAD_WIDTH:
    raise ValueError(f"CLIP text width {width} is not a multiple of {HEAD_WIDTH} (open_clip's head "
                     f"width); pass a config with num_heads")
  depth = len({m.group(1) for k in flat for m in [re.match(r"transformer\.resblocks\.(\d+)\.", k)] if m})
  return dict(width=int(width), depth=depth, num_heads=num_heads or int(width) // HEAD_WIDTH, vocab_size=int(vocab),
              context_length=int(flat["positional_embedding"].shape[0]),
              embed_dim=int(flat["text_projection"].shape[1]), activation="quick_gelu")


def convert(flat: Mapping[str, np.ndarray], num_heads: int) -> dict[str, np.ndarray]:
  """open_clip-named tensors -> jaxtok names (see the module docstring); unknown keys pass through
  for `fill_state` to report."""
  blocks, out = {}, {}
  for key, v in flat.items():
    m = re.match(r"transformer\.resblocks\.(\d+)\.(.+)$", key)
    if m:  # TiTok's ViT blocks are open_clip's ResidualAttentionBlock: the same map
      blocks[f"t.transformer.{m.group(1)}.{m.group(2)}"] = v
    elif key in ("ln_final.weight", "ln_final.bias"):
      out["ln_final." + ("scale" if key.endswith("weight") else "bias")] = v
    elif key == "token_embedding.weight":
      out["token_embedding"] = v
    else:
      out[key] = v  # positional_embedding, text_projection (same names), or unknown
  out.update({k[len("t."):]: v for k, v in _vit(blocks, "t.", num_heads).items()})
  return out


def load(path: str | os.PathLike, config: Mapping[str, Any] | None = None):
  """(CLIPText config, nnx.State of `nn.clip_text.CLIPText`) from an official weights file (open_clip
  / OpenAI `.bin`/`.pt`/`.safetensors`, or HF). config: None (read off the shapes) or overrides.
  Raises ValueError for a missing file and naming every missing, unexpected or mis-shaped tensor."""
  from jaxtok.nn import clip_text
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise ValueError(f"CLIP text weights file {path!r} does not exist (TA-TiTok / MaskGen use the "
                     f"OpenAI ViT-L/14-336 text tower: open_clip 'ViT-L-14-336', pretrained "
                     f"'openai')")
  overrides = common.tower_overrides(config, "CLIPText")
  flat = official_tensors(common.read_checkpoint(path)[0])
  return common.fill_tower(flat, overrides, infer_config=infer_config, convert=convert,
                           abstract_params=clip_text.abstract_params, source=path)
