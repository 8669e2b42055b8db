"""TiTok's released MaskGIT generators (bytedance/1d-tokenizer `modeling/maskgit.py`: ImageBert and
UViTBert; One-D-Piece's MaskGIT generators are ImageBert too) -> `generators.maskgit_official`.

Key map, ImageBert (arch "bert"; prefix model., an HF BertModel plus lm_head; Linear [O, I] ->
kernel [I, O]; LayerNorm weight -> scale):
  embeddings.word_embeddings / position_embeddings / token_type_embeddings .weight
                                                   word_embeddings / position_embeddings /
                                                   token_type_embeddings .embedding
  embeddings.LayerNorm                             emb_norm
  encoder.layer.i.attention.self.{query,key,value} layers.blocks.i.attn.qkv [W, 3, H, E] (+ qkv_bias
                                                   [3, H, E]), q/k/v fused in that order
  encoder.layer.i.attention.output.dense           layers.blocks.i.attn.out [H, E, W] (+ out_bias)
  encoder.layer.i.attention.output.LayerNorm       layers.blocks.i.norm1 (post-norm block)
  encoder.layer.i.intermediate.dense / output.dense layers.blocks.i.mlp.up / mlp.down
  encoder.layer.i.output.LayerNorm                 layers.blocks.i.norm2
  lm_head                                          lm_head
  embeddings.position_ids / token_type_ids         (index buffers of older transformers; dropped)
UViTBert (arch "uvit"):
  embeddings.weight / pos_embed [1, N+1, W]        word_embeddings / position_embeddings .embedding
  {in_blocks.i, mid_block, out_blocks.i}.{norm1, norm2}   same
  out_blocks.i.skip_linear                         out_skips.i
  ....attn.qkv.weight [3W, W] / attn.proj          ....attn.qkv [W, 3, H, E] / attn.out [H, E, W] (+ out_bias)
  ....mlp.fc1 / mlp.fc2                            ....mlp.up / mlp.down
A model built with scan_layers=True takes the same names: `common.fill_state` stacks blocks.i.*.
  norm / lm_head                                   norm / lm_head

Head counts are not in the tensors (both layouts need them to split the attention tensors): they
come from the config (RELEASED, transcribed from the
official configs, or `from_official` of an official config).
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

from jaxtok.convert import common

_BUFFERS = ("model.embeddings.position_ids", "model.embeddings.token_type_ids")


def from_official(official: Mapping[str, Any]) -> dict[str, Any]:
  """A `generators.maskgit_official` config from an official one (model.generator + codebook_size
  from model.vq_model; image_seq_len defaults to vq_model.num_latent_tokens, as its ${} does)."""
  try:
    gen, vq = dict(official["model"]["generator"]), dict(official["model"]["vq_model"])
  except (KeyError, TypeError):
    raise ValueError("an official generator config needs model.generator and model.vq_model") from None
  arch = {"ViT": "bert", "UViT": "uvit"}.get(gen.get("model_type", "ViT"))
  if arch is None:
    raise ValueError(f"unsupported official generator model_type {gen.get('model_type')!r} "
                     "(ViT or UViT)")
  seq = gen.get("image_seq_len", vq.get("num_latent_tokens"))
  if not isinstance(seq, int):
    seq = vq.get("num_latent_tokens")
  return dict(name="maskgit_official", arch=arch, codebook_size=int(vq["codebook_size"]),
              seq_len=int(seq), num_classes=int(gen["condition_num_classes"]),
              width=int(gen["hidden_size"]), depth=int(gen["num_hidden_layers"]),
              heads=int(gen["num_attention_heads"]), intermediate=int(gen["intermediate_size"]),
              class_dropout=float(gen.get("class_label_dropout", 0.1)))


def _gen(model_type, width, depth, heads, inter, k):
  return {"model": {"vq_model": {"codebook_size": 4096, "num_latent_tokens": k},
                    "generator": {"model_type": model_type, "hidden_size": width,
                                  "num_hidden_layers": depth, "num_attention_heads": heads,
                                  "intermediate_size": inter, "condition_num_classes": 1000,
                                  "class_label_dropout": 0.1}}}


# bytedance/1d-tokenizer configs/infer/TiTok/titok_{l32,b64,s128}.yaml and One-D-Piece
# configs/training/generator/maskgit_one-d-piece_{l,b,s}256.yaml (model fields only).
OFFICIAL: dict[str, dict[str, Any]] = {
    "yucornetto/generator_titok_l32_imagenet": _gen("ViT", 768, 24, 16, 3072, 32),
    "yucornetto/generator_titok_b64_imagenet": _gen("ViT", 768, 24, 16, 3072, 64),
    "yucornetto/generator_titok_s128_imagenet": _gen("UViT", 1024, 20, 16, 4096, 128),
    "turing-motors/MaskGIT_One-D-Piece-L-256": _gen("ViT", 768, 24, 16, 3072, 256),
    "turing-motors/MaskGIT_One-D-Piece-B-256": _gen("ViT", 768, 24, 16, 3072, 256),
    "turing-motors/MaskGIT_One-D-Piece-S-256": _gen("ViT", 768, 24, 16, 3072, 256),
}
RELEASED = {name: from_official(c) for name, c in OFFICIAL.items()}
ALIASES = {n.split("/", 1)[1]: n for n in OFFICIAL}


def released(name: str) -> dict[str, Any]:
  full = ALIASES.get(name, name)
  if full not in RELEASED:
    raise ValueError(f"unknown released MaskGIT generator {name!r}; known: {sorted(ALIASES)}")
  return dict(RELEASED[full])


def _bert(flat, heads):
  out, parts = {}, {}
  for key, v in flat.items():
    v = np.asarray(v)
    if key in _BUFFERS:
      continue
    m = re.fullmatch(r"model\.embeddings\.(word|position|token_type)_embeddings\.weight", key)
    if m:
      out[f"{m.group(1)}_embeddings.embedding"] = v
      continue
    m = re.fullmatch(r"model\.encoder\.layer\.(\d+)\.(.+)\.(weight|bias)", key)
    if m:
      pre, name, kind = f"layers.blocks.{m.group(1)}.", m.group(2), m.group(3)
      qkv = re.fullmatch(r"attention\.self\.(query|key|value)", name)
      if qkv:  # collected here, fused below
        parts.setdefault(pre + ("attn.qkv" if kind == "weight" else "attn.qkv_bias"), {})[
            qkv.group(1)] = v.T.reshape(v.shape[1], heads, -1) if kind == "weight" else v.reshape(heads, -1)
      elif name == "attention.output.dense":
        out[pre + ("attn.out" if kind == "weight" else "attn.out_bias")] = (
            v.T.reshape(heads, -1, v.shape[0]) if kind == "weight" else v)
      elif name.endswith("LayerNorm"):
        tgt = pre + {"attention.output.LayerNorm": "norm1", "output.LayerNorm": "norm2"}.get(name, name)
        out[tgt + (".scale" if kind == "weight" else ".bias")] = v
      elif name in ("intermediate.dense", "output.dense"):
        tgt = pre + {"intermediate.dense": "mlp.up", "output.dense": "mlp.down"}[name]
        out[tgt + (".kernel" if kind == "weight" else ".bias")] = v.T if kind == "weight" else v
      else:
        out[key] = v
      continue
    if key == "model.embeddings.LayerNorm.weight":
      out["emb_norm.scale"] = v
    elif key == "model.embeddings.LayerNorm.bias":
      out["emb_norm.bias"] = v
    elif key == "model.lm_head.weight":
      out["lm_head.kernel"] = v.T
    elif key == "model.lm_head.bias":
      out["lm_head.bias"] = v
    else:
      out[key] = v  # unexpected
  for name, qkv in parts.items():  # [W, H, E] x 3 -> [W, 3, H, E] (biases [H, E] x 3 -> [3, H, E])
    if len(qkv) == 3 and len({a.shape for a in qkv.values()}) == 1:
      out[name] = np.stack([qkv[n] for n in ("query", "key", "value")], axis=-3)
    else:  # an incomplete or mis-shaped triple: named for the key check to report
      out.update({f"{name}.{n}": a for n, a in qkv.items()})
  return out


def _uvit(flat, heads):
  out = {}
  for key, v in flat.items():
    v = np.asarray(v)
    if key == "embeddings.weight":
      out["word_embeddings.embedding"] = v
    elif key == "pos_embed":
      out["position_embeddings.embedding"] = v.reshape(-1, v.shape[-1])
    else:
      name = key.replace(".mlp.fc1.", ".mlp.up.").replace(".mlp.fc2.", ".mlp.down.")
      name = re.sub(r"^out_blocks\.(\d+)\.skip_linear\.", r"out_skips.\1.", name)
      if name.endswith(".attn.qkv.weight"):  # [3W, W] -> [W, 3, H, E]
        out[name[:-len("weight")].rstrip(".")] = v.T.reshape(v.shape[1], 3, heads, -1)
        continue
      if name.endswith(".attn.proj.weight"):  # [W_out, W_in] -> [H, E, W_out]
        out[name.replace(".proj.weight", ".out")] = v.T.reshape(heads, -1, v.shape[0])
        continue
      name = name.replace(".attn.proj.bias", ".attn.out_bias")
      if re.search(r"(^|\.)norm\d?\.weight$", name):
        name = name[:-len("weight")] + "scale"
      elif name.endswith(".weight"):
        name, v = name[:-len("weight")] + "kernel", v.T
      out[name] = v
  return out


def convert(flat: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Official ImageBert / UViTBert state dict -> {jaxtok parameter name: array} for `config`."""
  if config.get("arch", "bert") == "bert":
    return _bert(flat, int(config["heads"]))
  return _uvit(flat, int(config["heads"]))


def infer_config(flat: Mapping[str, np.ndarray]) -> dict[str, Any]:
  """A config read off the shapes. The head count is not in them: every released generator has 16
  heads (at widths 768 and 1024), which this assumes; prefer a RELEASED name or an official config."""
  if "model.embeddings.word_embeddings.weight" in flat:
    arch, lm = "bert", "model.lm_head.weight"
    width = int(flat["model.embeddings.word_embeddings.weight"].shape[1])
    seq = int(flat["model.embeddings.position_embeddings.weight"].shape[0]) - 1
    depth = len({k.split(".")[3] for k in flat if k.startswith("model.encoder.layer.")})
    inter = int(flat["model.encoder.layer.0.intermediate.dense.weight"].shape[0])
    vocab = int(flat["model.embeddings.word_embeddings.weight"].shape[0])
  elif "embeddings.weight" in flat and "pos_embed" in flat:
    arch, lm = "uvit", "lm_head.weight"
    width = int(flat["embeddings.weight"].shape[1])
    seq = int(flat["pos_embed"].shape[1]) - 1
    depth = 2 * len({k.split(".")[1] for k in flat if k.startswith("in_blocks.")})
    inter = int(flat["mid_block.mlp.fc1.weight"].shape[0])
    vocab = int(flat["embeddings.weight"].shape[0])
  else:
    raise ValueError("not an official MaskGIT generator state dict (no model.embeddings.* or "
                     f"embeddings.weight/pos_embed); keys start with {sorted({k.split('.')[0] for k in flat})}")
  k = int(flat[lm].shape[0])
  return dict(name="maskgit_official", arch=arch, codebook_size=k, seq_len=seq,
              num_classes=vocab - k - 2, width=width, depth=depth, heads=16, intermediate=inter)


# resolve_config(config, flat=None), abstract_params(config), build(config, params=None) and
# load(path, config=None) -> (config, nnx.State of a `generators.maskgit_official.OfficialMaskGIT`):
# see common.GeneratorConverter (a config not given is read off the shapes, assuming 16 heads).
_API = common.GeneratorConverter(
    "jaxtok.generators.maskgit_official", "maskgit_official", released=RELEASED, aliases=ALIASES,
    infer=infer_config, from_official=from_official, convert=convert)
resolve_config, abstract_params, build, load = (
    _API.resolve_config, _API.abstract_params, _API.build, _API.load)
