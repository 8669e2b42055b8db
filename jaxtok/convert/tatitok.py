"""Official TA-TiTok checkpoints -> jaxtok (`tokenizers.tatitok.TATiTok`).

bytedance/1d-tokenizer `modeling/tatitok.py` (HF turkeyju/tokenizer_tatitok_*): a single-stage TiTok
(`convert/titok.py` maps every TiTok tensor) plus the decoder's text inputs:
  decoder.text_guidance_proj.weight [W, C] / .bias      decoder.text_guidance_proj.kernel [C, W] / .bias
  decoder.text_guidance_positional_embedding [S, W]     decoder.text_guidance_positional_embedding.embedding
Configs: a released name (`RELEASED`, transcribed from configs/infer/TA-TiTok/*.yaml: B or S encoder,
L decoder, patch 16, 256 px, VQ 8192 codes of 64 dims without l2 normalisation or VAE 16 dims),
an official config (`from_official`), a jaxtok config, or None (read off the shapes: widths, depths,
tokens, codebook, text length and width; heads from the S/B/L table).
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np

from jaxtok.convert import common
from jaxtok.convert import titok as titok_conv

_TEXT = ("decoder.text_guidance_proj.weight", "decoder.text_guidance_proj.bias",
         "decoder.text_guidance_positional_embedding")


def from_official(official: Mapping[str, Any]) -> dict[str, Any]:
  """A jaxtok TA-TiTok config from an official one (yaml / HF config.json): TiTok's fields plus
  text_context_length / text_embed_dim (official defaults 77 / 768)."""
  cfg = titok_conv.from_official(official)
  vq = official["model"]["vq_model"]
  if cfg["decoder_head"] != "pixels":
    raise ValueError("TA-TiTok is single-stage: the official config must have is_legacy False")
  return dict(cfg, name="tatitok", text_context_length=int(vq.get("text_context_length", 77)),
              text_embed_dim=int(vq.get("text_embed_dim", 768)))


def _official(enc: str, k: int, vq: bool) -> dict[str, Any]:
  vq_model = dict(vit_enc_model_size=enc, vit_dec_model_size="large", vit_enc_patch_size=16,
                  vit_dec_patch_size=16, num_latent_tokens=k, finetune_decoder=False, is_legacy=False)
  if vq:
    vq_model.update(quantize_mode="vq", codebook_size=8192, token_size=64, use_l2_norm=False,
                    commitment_cost=0.25)
  else:
    vq_model.update(quantize_mode="vae", token_size=16)
  return {"model": {"vq_model": vq_model}, "dataset": {"preprocessing": {"crop_size": 256}}}


OFFICIAL: dict[str, dict[str, Any]] = {
    f"turkeyju/tokenizer_tatitok_{enc[0]}l{k}_{'vq' if vq else 'vae'}": _official(enc, k, vq)
    for enc, k, vq in (("base", 32, True), ("base", 64, True), ("base", 128, True),
                       ("base", 32, False), ("base", 64, False), ("small", 128, False))}
ALIASES = {n.split("/", 1)[1]: n for n in OFFICIAL}
RELEASED: dict[str, dict[str, Any]] = {name: from_official(c) for name, c in OFFICIAL.items()}


def infer_config(flat: Mapping[str, np.ndarray], *, image_size: int | None = None) -> dict[str, Any]:
  """TiTok's `infer_config` plus the text length and width read off the text tensors."""
  missing = [k for k in _TEXT if k not in flat]
  if missing:
    raise ValueError(f"not a TA-TiTok state dict: missing {missing} (a plain TiTok? use model "
                     f"'titok')")
  cfg = titok_conv.infer_config(flat, image_size=image_size)
  s, _ = flat["decoder.text_guidance_positional_embedding"].shape
  c = flat["decoder.text_guidance_proj.weight"].shape[1]
  return dict(cfg, name="tatitok", text_context_length=int(s),
              text_embed_dim=int(c))


def convert(flat: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Official TA-TiTok state dict -> {jaxtok parameter name: array} for `config`."""
  rest = {k: v for k, v in flat.items() if k not in _TEXT}
  out = titok_conv.convert(rest, config)
  if _TEXT[0] in flat:
    out["decoder.text_guidance_proj.kernel"] = np.asarray(flat[_TEXT[0]]).T
  if _TEXT[1] in flat:
    out["decoder.text_guidance_proj.bias"] = np.asarray(flat[_TEXT[1]])
  if _TEXT[2] in flat:
    out["decoder.text_guidance_positional_embedding.embedding"] = np.asarray(flat[_TEXT[2]])
  return out


def resolve_config(config: Any, flat: Mapping[str, np.ndarray] | None = None) -> dict[str, Any]:
  """A jaxtok TA-TiTok config from a released name, JSON, a mapping (jaxtok or official) or None."""
  from jaxtok import convert as convert_lib
  cfg = convert_lib.resolve_config(config, flat, released=RELEASED, aliases=ALIASES,
                                   infer=infer_config, from_official=from_official)
  if cfg.get("name") in ("titok", "vae"):  # a TiTok-style config given for a TA-TiTok file
    cfg = dict(cfg, name="tatitok", quantizer="vae" if cfg["name"] == "vae" else cfg.get("quantizer", "vq"))
  return cfg


def load(path: str | os.PathLike, config: Any = None):
  """(jaxtok config, nnx.State of a `TATiTok`) from an official checkpoint file; ValueError naming
  every missing, unexpected or mis-shaped tensor."""
  from jaxtok.tokenizers import api
  flat, _ = common.read_checkpoint(path)
  cfg = resolve_config(config, flat)
  tok = api.build(cfg)
  return cfg, common.fill_state(tok.abstract_params(), convert(flat, cfg), source=os.fspath(path))
