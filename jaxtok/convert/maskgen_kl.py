"""Official MaskGen-KL checkpoints -> jaxtok (`generators.maskgen_kl.MaskGenKL`).

bytedance/1d-tokenizer `modeling/maskgen.py` `MaskGen_KL` (HF turkeyju/generator_maskgen_kl_{l,xl});
the MM-DiT blocks are MaskGen-VQ's (`convert.maskgen`'s block map, under `decoder_blocks.`), the
head is MAR's SimpleMLPAdaLN inside DiffLoss. Key map (Linear weight [O, I] -> kernel [I, O]):

  text_emb / text_pooled_emb / z_proj               same names
  z_proj_ln.weight / .bias                          z_proj_ln.scale / .bias
  decoder_pos_embed_learned [1, K, W]               pos_embed [K, W]
  diffusion_pos_embed_learned [1, K, W]             diffusion_pos_embed [K, W]
  mask_token [1, 1, W]                              mask_token [W]
  decoder_blocks.i.*                                blocks.i.* (as convert.maskgen)
  decoder_norm.linear [2W, W] (scale, shift)        norm_ada
  diffloss.net.input_proj / cond_embed              head.inp / head.cond
  diffloss.net.time_embed.mlp.0 / .mlp.2            head.time / head.time_out
  diffloss.net.res_blocks.i.in_ln                   head.blocks.i.norm (scale, bias)
  diffloss.net.res_blocks.i.mlp.0 / .mlp.2          head.blocks.i.fc1 / fc2
  diffloss.net.res_blocks.i.adaLN_modulation.1      head.blocks.i.ada (shift, scale, gate: same order)
  diffloss.net.final_layer.adaLN_modulation.1       head.final_ada (shift, scale: same order)
  diffloss.net.final_layer.linear [2D, Wh]          head.out
The released checkpoints use 16 heads (not visible in the shapes) and scale_factor 0.7525
(configs/infer/MaskGen/maskgen_kl_*.yaml, not in the weights).
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

from jaxtok.convert import common
from jaxtok.convert import maskgen as vq


def _official(width, depth):
  return {"model": {"vq_model": {"token_size": 16, "num_latent_tokens": 32, "scale_factor": 0.7525,
                                 "text_embed_dim": 768},
                    "maskgen": {"decoder_embed_dim": width, "decoder_depth": depth,
                                "decoder_num_heads": 16, "micro_condition": True,
                                "micro_condition_embed_dim": 256, "text_drop_prob": 0.1,
                                "sample_aesthetic_score": 6.5}},
          "losses": {"diffloss_d": 8, "diffloss_w": width}}


# configs/infer/MaskGen/maskgen_kl_{l,xl}.yaml (model and losses fields).
OFFICIAL = {"turkeyju/generator_maskgen_kl_l": _official(1024, 16),
            "turkeyju/generator_maskgen_kl_xl": _official(1280, 20)}
ALIASES = {n.split("/", 1)[1]: n for n in OFFICIAL}


def from_official(official: Mapping[str, Any]) -> dict[str, Any]:
  """A jaxtok config from an official MaskGen-KL config ({"model": {"vq_model", "maskgen"},
  "losses": {"diffloss_d", "diffloss_w"}})."""
  try:
    vqm, mg, losses = official["model"]["vq_model"], official["model"]["maskgen"], official["losses"]
  except (KeyError, TypeError):
    raise ValueError("an official MaskGen-KL config needs model.vq_model, model.maskgen and "
                     "losses") from None
  return dict(name="maskgen_kl", token_dim=int(vqm["token_size"]),
              seq_len=int(vqm["num_latent_tokens"]), scale_factor=float(vqm["scale_factor"]),
              text_dim=int(vqm.get("text_embed_dim", 768)), width=int(mg["decoder_embed_dim"]),
              depth=int(mg["decoder_depth"]), heads=int(mg["decoder_num_heads"]),
              micro_condition=bool(mg["micro_condition"]),
              micro_condition_dim=int(mg["micro_condition_embed_dim"]),
              text_drop_prob=float(mg["text_drop_prob"]),
              sample_aesthetic_score=float(mg.get("sample_aesthetic_score", 6.0)),
              head_width=int(losses["diffloss_w"]), head_depth=int(losses["diffloss_d"]),
              diffusion_batch_mul=int(mg.get("diffusion_batch_mul", 4)))


RELEASED = {name: from_official(c) for name, c in OFFICIAL.items()}

_HEAD = {"input_proj": "inp", "cond_embed": "cond", "time_embed.mlp.0": "time",
         "time_embed.mlp.2": "time_out", "final_layer.adaLN_modulation.1": "final_ada",
         "final_layer.linear": "out"}
_RES = {"in_ln": "norm", "mlp.0": "fc1", "mlp.2": "fc2", "adaLN_modulation.1": "ada"}
_PARAMS = {"decoder_pos_embed_learned": "pos_embed", "diffusion_pos_embed_learned":
           "diffusion_pos_embed", "mask_token": "mask_token"}


def _linear(dst: str, kind: str, v: np.ndarray, layer_norm: bool = False) -> tuple[str, np.ndarray]:
  if layer_norm:
    return f"{dst}.{'scale' if kind == 'weight' else 'bias'}", v
  return (f"{dst}.kernel", v.T) if kind == "weight" else (f"{dst}.bias", v)


def _head_key(name: str, v: np.ndarray) -> tuple[str, np.ndarray] | None:
  """diffloss.net.<name> -> (jaxtok name, array), None when not a head tensor."""
  module, _, kind = name.rpartition(".")
  m = re.fullmatch(r"res_blocks\.(\d+)\.(.+)", module)
  if m and m.group(2) in _RES:
    return _linear(f"head.blocks.{m.group(1)}.{_RES[m.group(2)]}", kind, v, m.group(2) == "in_ln")
  if module in _HEAD:
    return _linear(f"head.{_HEAD[module]}", kind, v)
  return None


def convert(flat: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Official MaskGen-KL state dict -> {jaxtok parameter name: array} for `config`."""
  blocks, rest = vq.split_blocks(flat, "decoder_blocks")
  out = vq.convert_blocks(blocks, config)
  for key, v in rest:
    module, _, kind = key.rpartition(".")
    head = _head_key(key[len("diffloss.net."):], v) if key.startswith("diffloss.net.") else None
    if head is not None:
      out[head[0]] = head[1]
    elif key in _PARAMS:
      out[_PARAMS[key]] = v.reshape(v.shape[-1]) if key == "mask_token" else v.reshape(v.shape[-2:])
    elif module in ("text_emb", "text_pooled_emb", "z_proj", "z_proj_ln", "decoder_norm.linear"):
      dst = {"decoder_norm.linear": "norm_ada"}.get(module, module)
      k, a = _linear(dst, kind, v, module == "z_proj_ln")
      out[k] = a
    else:
      out[key] = v  # unexpected: reported by fill_state
  return out


def infer_config(flat: Mapping[str, np.ndarray]) -> dict[str, Any]:
  """A config read off the shapes, assuming the releases' 16 heads and scale_factor 0.7525;
  micro-conditioning when text_pooled_emb is wider than text_emb (the extra columns = its width)."""
  need = ("decoder_pos_embed_learned", "text_emb.weight", "text_pooled_emb.weight",
          "z_proj.weight", "diffloss.net.input_proj.weight")
  missing = [k for k in need if k not in flat]
  if missing:
    raise ValueError(f"not an official MaskGen-KL state dict: missing {missing} (keys start with "
                     f"{sorted({k.split('.')[0] for k in flat})})")
  width, token_dim = (int(d) for d in flat["z_proj.weight"].shape)
  text_dim = int(flat["text_emb.weight"].shape[1])
  micro = int(flat["text_pooled_emb.weight"].shape[1]) - text_dim
  depth = len({k.split(".")[1] for k in flat if k.startswith("decoder_blocks.")})
  head_depth = len({k.split(".")[3] for k in flat if k.startswith("diffloss.net.res_blocks.")})
  return dict(name="maskgen_kl", token_dim=token_dim,
              seq_len=int(flat["decoder_pos_embed_learned"].shape[-2]), width=width, depth=depth,
              heads=16, text_dim=text_dim, micro_condition=micro > 0,
              micro_condition_dim=micro if micro > 0 else 256,
              head_width=int(flat["diffloss.net.input_proj.weight"].shape[0]),
              head_depth=head_depth, scale_factor=0.7525)


_API = common.GeneratorConverter(
    "jaxtok.generators.maskgen_kl", "maskgen_kl", released=RELEASED, aliases=ALIASES,
    infer=infer_config, from_official=from_official, convert=convert)
resolve_config, abstract_params, build, load = (
    _API.resolve_config, _API.abstract_params, _API.build, _API.load)
