"""Official MaskGen-VQ checkpoints -> jaxtok (`generators.maskgen.MaskGenVQ`).

bytedance/1d-tokenizer `modeling/maskgen.py` `MaskGen_VQ` (HF turkeyju/generator_maskgen_vq_{l,xl});
its blocks are diffusers' `JointTransformerBlock`. Key map (Linear weight [O, I] -> kernel [I, O]):

  text_embed_proj / cond_pooled_proj               same names
  embeddings.weight [V + 2 + classes, W]           embeddings
  pos_embed [1, K, W]                              pos_embed [K, W]
  lm_head.weight (the tied table, if saved)        dropped (checked equal), or the table itself
                                                   when embeddings.weight was deduplicated away
  norm.linear [2W, W] (scale, shift)               norm_ada
  blocks.i.norm1.linear [6W, W]                    blocks.i.image.ada; diffusers' chunk order
      (shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp) reordered to nn.Block's
      (gate_msa, gate_mlp, shift_msa, scale_msa, shift_mlp, scale_mlp)
  blocks.i.norm1_context.linear                    blocks.i.context.ada (same reorder); in the last
      block [2W, W] (scale, shift)                 blocks.i.context_ada
  blocks.i.attn.to_{q,k,v} [W, W] (+ bias)         blocks.i.image.attn.qkv [W, 3, H, E] (+ qkv_bias)
  blocks.i.attn.to_out.0                           blocks.i.image.attn.out [H, E, W] (+ out_bias)
  blocks.i.attn.add_{q,k,v}_proj                   blocks.i.context.attn.qkv; last block:
                                                   blocks.i.context_qkv [W, 3W] (q | k | v columns)
  blocks.i.attn.to_add_out                         blocks.i.context.attn.out
  blocks.i.ff.net.0.proj / ff.net.2                blocks.i.image.mlp.up / down
  blocks.i.ff_context.net.0.proj / net.2           blocks.i.context.mlp.up / down
(LayerNorms without affine hold no tensors.) Heads are not visible in the shapes: the releases use
16 (both L and XL); the codebook size is the table's rows - 2 - 1000 classes (the releases'
condition_num_classes).
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

from jaxtok.convert import common

# diffusers AdaLayerNormZero chunks -> nn.Block's order (gate_msa, gate_mlp, shift_msa, scale_msa,
# shift_mlp, scale_mlp), as indices into diffusers' (shift_msa, scale_msa, gate_msa, shift_mlp,
# scale_mlp, gate_mlp).
_ADA_ORDER = (2, 5, 0, 1, 3, 4)


def _official(width, depth):
  return {"model": {"vq_model": {"codebook_size": 8192, "num_latent_tokens": 128,
                                 "text_embed_dim": 768},
                    "maskgen": {"decoder_embed_dim": width, "decoder_depth": depth,
                                "decoder_num_heads": 16, "micro_condition": True,
                                "micro_condition_embed_dim": 256, "text_drop_prob": 0.1,
                                "condition_num_classes": 1000, "sample_aesthetic_score": 6.5}}}


# configs/infer/MaskGen/maskgen_vq_{l,xl}.yaml (model fields).
OFFICIAL = {"turkeyju/generator_maskgen_vq_l": _official(1024, 16),
            "turkeyju/generator_maskgen_vq_xl": _official(1280, 20)}
ALIASES = {n.split("/", 1)[1]: n for n in OFFICIAL}


def from_official(official: Mapping[str, Any]) -> dict[str, Any]:
  """A jaxtok config from an official MaskGen-VQ config ({"model": {"vq_model", "maskgen"}})."""
  try:
    vq, mg = official["model"]["vq_model"], official["model"]["maskgen"]
  except (KeyError, TypeError):
    raise ValueError("an official MaskGen config needs model.vq_model and model.maskgen") from None
  return dict(name="maskgen", codebook_size=int(vq["codebook_size"]),
              seq_len=int(vq["num_latent_tokens"]), text_dim=int(vq.get("text_embed_dim", 768)),
              width=int(mg["decoder_embed_dim"]), depth=int(mg["decoder_depth"]),
              heads=int(mg["decoder_num_heads"]), num_classes=int(mg["condition_num_classes"]),
              micro_condition=bool(mg["micro_condition"]),
              micro_condition_dim=int(mg["micro_condition_embed_dim"]),
              text_drop_prob=float(mg["text_drop_prob"]),
              sample_aesthetic_score=float(mg.get("sample_aesthetic_score", 6.0)))


RELEASED = {name: from_official(c) for name, c in OFFICIAL.items()}


def _kernel(v):
  return np.asarray(v).T


def _ada(v, w):
  """[6W, ...] rows in diffusers' chunk order -> nn.Block's; a weight [6W, W] also transposed."""
  v = np.asarray(v)
  chunks = np.split(v, 6, axis=0) if v.shape[0] == 6 * w else [v]
  v = np.concatenate([chunks[i] for i in _ADA_ORDER], axis=0) if len(chunks) == 6 else v
  return v.T if v.ndim == 2 else v


def _qkv(parts, kind, heads, fused):
  """q, k, v Linear tensors -> Attention's qkv [W, 3, H, E] / qkv_bias [3, H, E], or (fused, the
  last block's context) a Dense [W, 3W] / [3W] with q | k | v columns."""
  q, k, v = (np.asarray(parts[c]) for c in "qkv")
  if kind == "weight":
    kernel = np.concatenate([q.T, k.T, v.T], axis=1)  # [W, 3W]
    return kernel if fused else kernel.reshape(kernel.shape[0], 3, heads, -1)
  bias = np.concatenate([q, k, v])
  return bias if fused else bias.reshape(3, heads, -1)


def _block(i: int, items: Mapping[str, np.ndarray], heads: int, last: bool, width: int) -> dict:
  out: dict[str, np.ndarray] = {}
  p = f"blocks.{i}."
  qkv: dict[tuple[str, str], dict[str, np.ndarray]] = {}
  for name, v in items.items():
    module, _, kind = name.rpartition(".")
    m = re.fullmatch(r"attn\.(to|add)_([qkv])(?:_proj)?", module)
    if m:
      stream = "image" if m.group(1) == "to" else "context"
      qkv.setdefault((stream, kind), {})[m.group(2)] = v
      continue
    dst = {"norm1.linear": "image.ada", "attn.to_out.0": "image.attn.out",
           "attn.to_add_out": "context.attn.out", "ff.net.0.proj": "image.mlp.up",
           "ff.net.2": "image.mlp.down", "ff_context.net.0.proj": "context.mlp.up",
           "ff_context.net.2": "context.mlp.down",
           "norm1_context.linear": "context_ada" if last else "context.ada"}.get(module)
    if dst is None:
      out[p + name] = v  # unexpected: reported by fill_state
    elif dst.endswith(".ada"):
      out[p + dst + (".kernel" if kind == "weight" else ".bias")] = _ada(v, width)
    elif dst.endswith("attn.out"):
      out[p + dst + ("" if kind == "weight" else "_bias")] = (
          np.asarray(v).T.reshape(heads, -1, v.shape[0]) if kind == "weight" else v)
    else:
      out[p + dst + (".kernel" if kind == "weight" else ".bias")] = (
          _kernel(v) if kind == "weight" else v)
  for (stream, kind), parts in qkv.items():
    fused = stream == "context" and last
    name = ("context_qkv." + ("kernel" if kind == "weight" else "bias") if fused
            else f"{stream}.attn." + ("qkv" if kind == "weight" else "qkv_bias"))
    if sorted(parts) != ["k", "q", "v"]:
      raise ValueError(f"MaskGen block {i}: attention {stream} needs q, k and v .{kind}, got "
                       f"{sorted(parts)}")
    out[p + name] = _qkv(parts, kind, heads, fused)
  return out


def split_blocks(flat: Mapping[str, np.ndarray], prefix: str):
  """({block index: {key within the block: array}} of the keys `prefix.<i>.<rest>`, [(key, array)
  of every other key]) (arrays as numpy)."""
  blocks: dict[int, dict[str, np.ndarray]] = {}
  rest = []
  for key, v in flat.items():
    v = np.asarray(v)
    m = re.fullmatch(re.escape(prefix) + r"\.(\d+)\.(.+)", key)
    if m:
      blocks.setdefault(int(m.group(1)), {})[m.group(2)] = v
    else:
      rest.append((key, v))
  return blocks, rest


def convert_blocks(blocks: Mapping[int, Mapping[str, np.ndarray]], config: Mapping[str, Any]) -> dict:
  """The MM-DiT joint blocks of `split_blocks` -> jaxtok names (the last one context-pre-only)."""
  heads, depth, width = int(config["heads"]), int(config["depth"]), int(config["width"])
  out: dict[str, np.ndarray] = {}
  for i, items in blocks.items():
    out.update(_block(i, items, heads, i == depth - 1, width))
  return out


def convert(flat: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Official MaskGen-VQ state dict -> {jaxtok parameter name: array} for `config`."""
  blocks, rest = split_blocks(flat, "blocks")
  out = convert_blocks(blocks, config)
  for key, v in rest:
    if key in ("text_embed_proj.weight", "cond_pooled_proj.weight"):
      out[key[:-len("weight")] + "kernel"] = v.T
    elif key == "norm.linear.weight":
      out["norm_ada.kernel"] = v.T
    elif key == "norm.linear.bias":
      out["norm_ada.bias"] = v
    elif key == "embeddings.weight":
      out["embeddings"] = v
    elif key == "pos_embed":
      out["pos_embed"] = v.reshape(v.shape[-2:])
    elif key == "lm_head.weight":
      # WeightTiedLMHead holds the whole embedding table (it slices [:V] in forward); a file saved
      # with shared tensors deduplicated may keep only this name.
      if "embeddings.weight" not in flat:
        out["embeddings"] = v
      elif not np.array_equal(v, np.asarray(flat["embeddings.weight"])):
        raise ValueError("lm_head.weight must be the tied embeddings.weight (weight_tying, the "
                         "releases'); an untied head is not supported")
    else:
      out[key] = v  # text_embed_proj.bias, cond_pooled_proj.bias (same names), or unexpected
  return out


def infer_config(flat: Mapping[str, np.ndarray]) -> dict[str, Any]:
  """A config read off the shapes, assuming the releases' 16 heads and 1000 class rows,
  micro-conditioning when cond_pooled_proj is wider than text_embed_proj (the extra columns = its
  width)."""
  need = ("pos_embed", "text_embed_proj.weight", "cond_pooled_proj.weight")
  missing = [k for k in need if k not in flat] + (
      [] if "embeddings.weight" in flat or "lm_head.weight" in flat else ["embeddings.weight"])
  if missing:
    raise ValueError(f"not an official MaskGen-VQ state dict: missing {missing} (keys start with "
                     f"{sorted({k.split('.')[0] for k in flat})})")
  table = flat["embeddings.weight"] if "embeddings.weight" in flat else flat["lm_head.weight"]
  rows, width = (int(d) for d in table.shape)
  v_size = rows - 1002
  text_dim = int(flat["text_embed_proj.weight"].shape[1])
  micro = int(flat["cond_pooled_proj.weight"].shape[1]) - text_dim
  depth = len({k.split(".")[1] for k in flat if k.startswith("blocks.")})
  return dict(name="maskgen", codebook_size=v_size, seq_len=int(flat["pos_embed"].shape[-2]),
              num_classes=rows - v_size - 2, width=width, depth=depth, heads=16, text_dim=text_dim,
              micro_condition=micro > 0, micro_condition_dim=micro if micro > 0 else 256)


_API = common.GeneratorConverter(
    "jaxtok.generators.maskgen", "maskgen", released=RELEASED, aliases=ALIASES,
    infer=infer_config, from_official=from_official, convert=convert)
resolve_config, abstract_params, build, load = (
    _API.resolve_config, _API.abstract_params, _API.build, _API.load)
