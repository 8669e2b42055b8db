"""Official TiTok and One-D-Piece checkpoints -> jaxtok (`tokenizers.titok.TiTok`).

Covers bytedance/1d-tokenizer's TiTok (legacy two-stage: TiTok-S/B/L with the proxy-code head and
the MaskGIT-VQGAN pixel decoder; single-stage VQ "BL/SL" and VAE "LL/BL") and turingmotors'
One-D-Piece, whose checkpoints have exactly the legacy TiTok layout (it is TiTok with tail-token
drop; jaxtok config name "onedpiece"). Files: the HF `model.safetensors` or the `*.bin` state dicts.

Key map (official -> jaxtok; P = encoder./decoder.; Linear weights [O, I] -> kernel [I, O]; convs
[O, I, kh, kw] -> [kh, kw, I, O]; LayerNorm weight -> scale):
  latent_tokens                                      latent_tokens
  quantize.embedding.weight (vq)                     codebook
  P class_embedding / positional_embedding /         P<same>.embedding   (mask_token [1,1,W] -> [1,W])
    latent_token_positional_embedding / mask_token
  P ln_pre / ln_post                                 P<same>.scale / .bias
  P transformer.i.attn.in_proj_weight [3W, W]        P transformer.blocks.i.attn.qkv [W, 3, H, E]
  P transformer.i.attn.in_proj_bias [3W]             ... attn.qkv_bias [3, H, E]
  P transformer.i.attn.out_proj.weight [W, W]        ... attn.out [H, E, W]   (+ .bias -> out_bias)
  P transformer.i.{ln_1, ln_2}                      ... blocks.i.{norm1, norm2}
  P transformer.i.mlp.{c_fc, c_proj}                 ... blocks.i.mlp.{up, down}
  encoder.patch_embed.weight [W, 3, p, p]            encoder.patch_embed.kernel [p*p*3, W]
  encoder.conv_out (1x1 conv)                        encoder.conv_out (dense)
  decoder.decoder_embed                              decoder.decoder_embed
  decoder.ffn.0 / decoder.ffn.2 (legacy 1x1 convs)   decoder.ffn / decoder.ffn_out (proxy logits)
  decoder.ffn.0 / decoder.conv_out (single-stage)    decoder.ffn (dense) / decoder.conv_out (3x3)
  pixel_quantize.embedding.weight                    pixel_codebook
  pixel_decoder.*                                    pixel_decoder.*  (see convert/vqgan.py)
`decoder.conv_out` of a legacy model is an Identity (no tensors). Tensors that map to nothing are
errors; so are missing and mis-shaped ones (`common.fill_state` names them all).

Settings a state dict cannot show: the attention head count, `is_legacy` (the raw reshape before
encoder.conv_out), `use_l2_norm` and the image size. They come from the config given to `load`: a
jaxtok config, a released name (RELEASED, transcribed from the official configs/infer/*.yaml, see
`OFFICIAL`), or an official config (`from_official`, e.g. the HF `config.json`). Without one,
`infer_config` reads the sizes off the shapes and takes heads from the S/B/L table (width 512/768/
1024) and legacy = l2 = "has the proxy-code head", which holds for every released checkpoint.
"""
from __future__ import annotations

import os
import re
from typing import Any, Mapping

import numpy as np

from jaxtok.convert import common
from jaxtok.convert.vqgan import conv_net_params

# ----------------------------------------------------------------------------- released models

_SIZES = {"small": "S", "base": "B", "large": "L"}
_HEADS = {512: 8, 768: 12, 1024: 16}  # ViT S/B/L width -> heads (modeling/modules/blocks.py)


def _official(enc, dec, k, *, vq=True, legacy=False, token_size=None, codebook=None, l2=None):
  vq_model = {"vit_enc_model_size": enc, "vit_dec_model_size": dec, "vit_enc_patch_size": 16,
              "vit_dec_patch_size": 16, "num_latent_tokens": k}
  if legacy:  # two-stage: is_legacy defaults to True, finetune_decoder True
    vq_model.update(codebook_size=4096, token_size=12, use_l2_norm=True, commitment_cost=0.25,
                    finetune_decoder=True)
  elif vq:
    vq_model.update(codebook_size=codebook, token_size=token_size, use_l2_norm=l2,
                    commitment_cost=0.25, finetune_decoder=False, is_legacy=False)
  else:
    vq_model.update(quantize_mode="vae", token_size=token_size, finetune_decoder=False,
                    is_legacy=False)
  return {"model": {"vq_model": vq_model}, "dataset": {"preprocessing": {"crop_size": 256}}}


# The official configs of the released tokenizers (bytedance/1d-tokenizer configs/infer/TiTok/*.yaml
# at 942a96f; One-D-Piece configs/one-d-piece_*256.yaml at 473665d), model and crop fields only.
# Keys: the HF repository names (the README's checkpoint links).
OFFICIAL: dict[str, dict[str, Any]] = {
    "yucornetto/tokenizer_titok_l32_imagenet": _official("large", "large", 32, legacy=True),
    "yucornetto/tokenizer_titok_b64_imagenet": _official("base", "base", 64, legacy=True),
    "yucornetto/tokenizer_titok_s128_imagenet": _official("small", "small", 128, legacy=True),
    "yucornetto/tokenizer_titok_bl64_vq8k_imagenet": _official("base", "large", 64, token_size=64,
                                                               codebook=8192, l2=False),
    "yucornetto/tokenizer_titok_bl128_vq8k_imagenet": _official("base", "large", 128, token_size=64,
                                                                codebook=8192, l2=False),
    "yucornetto/tokenizer_titok_sl256_vq8k_imagenet": _official("small", "large", 256, token_size=64,
                                                                codebook=8192, l2=False),
    "yucornetto/tokenizer_titok_ll32_vae_c16_imagenet": _official("large", "large", 32, vq=False,
                                                                  token_size=16),
    "yucornetto/tokenizer_titok_bl64_vae_c16_imagenet": _official("base", "large", 64, vq=False,
                                                                  token_size=16),
    "yucornetto/tokenizer_titok_bl128_vae_c16_imagenet": _official("base", "large", 128, vq=False,
                                                                   token_size=16),
    "turing-motors/One-D-Piece-L-256": _official("large", "large", 256, legacy=True),
    "turing-motors/One-D-Piece-B-256": _official("base", "base", 256, legacy=True),
    "turing-motors/One-D-Piece-S-256": _official("small", "small", 256, legacy=True),
}
for _name in [n for n in OFFICIAL if n.startswith("turing-motors/")]:
  OFFICIAL[_name]["model"]["type"] = "one_d_piece"
  OFFICIAL[_name]["model"]["vq_model"]["strict_length_assertion"] = False
# Short names: the repository name without the owner (e.g. "tokenizer_titok_l32_imagenet").
ALIASES = {n.split("/", 1)[1]: n for n in OFFICIAL}


def from_official(official: Mapping[str, Any]) -> dict[str, Any]:
  """A jaxtok config from an official TiTok/One-D-Piece config ({"model": {"vq_model": ...},
  "dataset": {"preprocessing": {"crop_size": ...}}}, as in the yaml files or the HF config.json).

  Follows the official defaults: quantize_mode "vq", is_legacy True, finetune_decoder True (the
  legacy proxy-code head + MaskGIT-VQGAN pixel decoder at its fixed size).
  """
  try:
    vq = dict(official["model"]["vq_model"])
  except (KeyError, TypeError):
    raise ValueError("an official TiTok config needs model.vq_model (got keys "
                     f"{sorted(official) if isinstance(official, Mapping) else type(official)})") from None
  crop = official.get("dataset", {}).get("preprocessing", {}).get("crop_size", 256)
  mode = vq.get("quantize_mode", "vq")
  legacy = bool(vq.get("is_legacy", True))
  finetune = bool(vq.get("finetune_decoder", True))
  if mode not in ("vq", "vae"):
    raise ValueError(f"unsupported official quantize_mode {mode!r} (vq or vae)")
  if vq.get("vit_enc_patch_size") != vq.get("vit_dec_patch_size"):
    raise ValueError("jaxtok's TiTok uses one patch size; the official config has encoder "
                     f"{vq.get('vit_enc_patch_size')} and decoder {vq.get('vit_dec_patch_size')}")
  if not legacy and finetune:
    raise ValueError("an official config with is_legacy False and finetune_decoder True has no "
                     "released counterpart (single-stage models decode pixels directly)")
  for part in ("enc", "dec"):
    if vq.get(f"vit_{part}_model_size") not in _SIZES:
      raise ValueError(f"vit_{part}_model_size must be one of {sorted(_SIZES)}, got "
                       f"{vq.get(f'vit_{part}_model_size')!r}")
  is_odp = official.get("model", {}).get("type") == "one_d_piece"
  cfg = dict(name="onedpiece" if is_odp else ("vae" if mode == "vae" else "titok"),
             image_size=int(crop), patch_size=int(vq["vit_enc_patch_size"]),
             encoder_size=_SIZES[vq["vit_enc_model_size"]],
             decoder_size=_SIZES[vq["vit_dec_model_size"]],
             num_latent_tokens=int(vq["num_latent_tokens"]), token_size=int(vq["token_size"]),
             quantizer=mode, legacy_reshape=legacy,
             decoder_head="proxy_codes" if legacy else "pixels")
  if mode == "vq":
    cfg.update(codebook_size=int(vq["codebook_size"]), use_l2_norm=bool(vq.get("use_l2_norm", False)),
               commitment_cost=float(vq.get("commitment_cost", 0.25)))
  return cfg


RELEASED: dict[str, dict[str, Any]] = {name: from_official(c) for name, c in OFFICIAL.items()}


def released(name: str) -> dict[str, Any]:
  """The jaxtok config of a released tokenizer (full HF name or the name without the owner)."""
  full = ALIASES.get(name, name)
  if full not in RELEASED:
    raise ValueError(f"unknown released TiTok/One-D-Piece tokenizer {name!r}; known: "
                     f"{sorted(ALIASES)}")
  return dict(RELEASED[full])


# ----------------------------------------------------------------------------- conversion


def _linear(w):
  w = np.asarray(w)
  return w[:, :, 0, 0].T if w.ndim == 4 else w.T  # 1x1 convs act as linear layers


def _split(v, shape):
  """v reshaped to `shape` (one -1), or v unchanged when it does not divide (the shape check then
  reports it)."""
  known = int(np.prod([d for d in shape if d != -1]))
  return v.reshape(shape) if v.size % known == 0 else v


_BLOCK_NAMES = {"ln_1": "norm1", "ln_2": "norm2", "mlp.c_fc": "mlp.up", "mlp.c_proj": "mlp.down"}


def _vit(flat: Mapping[str, np.ndarray], p: str, heads: int) -> dict[str, np.ndarray]:
  """The ViT tensors under prefix p ("encoder." / "decoder.") as jaxtok names."""
  out = {}
  emb = ("class_embedding", "positional_embedding", "latent_token_positional_embedding", "mask_token")
  for key, v in flat.items():
    if not key.startswith(p):
      continue
    rest, v = key[len(p):], np.asarray(v)
    if rest in emb:
      out[f"{p}{rest}.embedding"] = v.reshape(-1, v.shape[-1])
      continue
    m = re.fullmatch(r"transformer\.(\d+)\.(.+)", rest)
    if m:
      blk, name = f"{p}transformer.blocks.{m.group(1)}.", m.group(2)
      if name == "attn.in_proj_weight":  # [3W, W] -> [W, 3, H, E]
        out[blk + "attn.qkv"] = _split(v.T, (v.shape[-1], 3, heads, -1))
      elif name == "attn.in_proj_bias":
        out[blk + "attn.qkv_bias"] = _split(v, (3, heads, -1))
      elif name == "attn.out_proj.weight":  # [W_out, W_in] -> [H, E, W_out]
        out[blk + "attn.out"] = _split(v.T, (heads, -1, v.shape[0]))
      elif name == "attn.out_proj.bias":
        out[blk + "attn.out_bias"] = v
      else:
        # ln_1/ln_2 -> norm1/norm2 (weight -> scale), mlp.c_fc/c_proj -> mlp.up/down (Linear
        # weights transposed); anything unknown keeps its name for the shape check to report.
        module, _, kind = name.rpartition(".")
        module = _BLOCK_NAMES.get(module, module)
        if kind == "weight" and module.startswith("mlp."):
          kind, v = "kernel", v.T
        elif kind == "weight" and module.startswith("norm"):
          kind = "scale"
        out[f"{blk}{module}.{kind}"] = v
      continue
    if re.fullmatch(r"ln_(pre|post)\.weight", rest):
      out[f"{p}{rest[:-len('weight')]}scale"] = v
    elif rest == "patch_embed.weight":
      out[f"{p}patch_embed.kernel"] = v.transpose(2, 3, 1, 0).reshape(-1, v.shape[0])
    elif rest in ("conv_out.weight", "decoder_embed.weight", "ffn.0.weight"):
      name = {"ffn.0.weight": "ffn.kernel"}.get(rest, rest[:-len("weight")] + "kernel")
      if p == "decoder." and rest == "conv_out.weight":  # single-stage 3x3 RGB conv
        out[p + name] = v.transpose(2, 3, 1, 0)
      else:
        out[p + name] = _linear(v)
    elif rest == "ffn.0.bias":
      out[p + "ffn.bias"] = v
    elif rest == "ffn.2.weight":
      out[p + "ffn_out.kernel"] = _linear(v)
    elif rest == "ffn.2.bias":
      out[p + "ffn_out.bias"] = v
    else:
      out[key] = v  # conv_out.bias, decoder_embed.bias, patch_embed.bias (same name), or unknown
  return out


def convert(flat: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Official TiTok / One-D-Piece state dict -> {jaxtok parameter name: array} for `config`
  (its encoder/decoder head counts are needed to split the attention tensors)."""
  from jaxtok.tokenizers.titok import _sizes
  enc_heads = _sizes(config, "encoder")["encoder_heads"]
  dec_heads = _sizes(config, "decoder")["decoder_heads"]
  out = _vit(flat, "encoder.", enc_heads)
  out.update(_vit(flat, "decoder.", dec_heads))
  out.update(conv_net_params(flat, "pixel_decoder.", "pixel_decoder."))
  for key, v in flat.items():
    if key.startswith(("encoder.", "decoder.", "pixel_decoder.")):
      continue
    renamed = {"quantize.embedding.weight": "codebook",
               "pixel_quantize.embedding.weight": "pixel_codebook"}.get(key, key)
    out[renamed] = np.asarray(v)
  return out


def _count(flat, pattern):
  return len({m.group(1) for k in flat for m in [re.match(pattern, k)] if m})


def _image_size(flat: Mapping[str, np.ndarray], patch: int, given: int | None) -> int:
  """The image size the positional embedding was made for: its rows are grid**2 + 1 (class token),
  image = grid * patch. `given` (an explicit image_size) must agree; 256 when the tensor is absent
  (the key check of the conversion then names it)."""
  pos = flat.get("encoder.positional_embedding")
  if pos is None:
    return 256 if given is None else int(given)
  rows = int(np.shape(pos)[0])
  grid = int(round((rows - 1) ** 0.5))
  if grid < 1 or grid * grid != rows - 1:
    raise ValueError(f"encoder.positional_embedding has {rows} rows; a TiTok encoder has "
                     f"grid**2 + 1 (patches and the class token)")
  if given is not None and int(given) != grid * patch:
    raise ValueError(f"image_size {given} does not match the checkpoint: encoder.positional_embedding "
                     f"has {rows} rows = {grid}x{grid} patches of {patch} px + 1, i.e. image_size "
                     f"{grid * patch}")
  return grid * patch


def infer_config(flat: Mapping[str, np.ndarray], *, image_size: int | None = None) -> dict[str, Any]:
  """A jaxtok config read off an official state dict's shapes (see the module docstring for what
  shapes cannot show). image_size: read off the positional embedding's rows when None.
  Raises ValueError for a non-TiTok dict, a width outside S/B/L, or a legacy (proxy-code) dict
  without its pixel decoder."""
  need = ("latent_tokens", "encoder.patch_embed.weight", "encoder.conv_out.weight",
          "decoder.decoder_embed.weight")
  missing = [k for k in need if k not in flat]
  if missing:
    raise ValueError(f"not a TiTok state dict: missing {missing} (keys start with "
                     f"{sorted({k.split('.')[0] for k in flat})})")
  enc_w, patch = int(flat["encoder.patch_embed.weight"].shape[0]), int(flat["encoder.patch_embed.weight"].shape[-1])
  dec_w, token_size = flat["decoder.decoder_embed.weight"].shape
  for part, w in (("encoder", enc_w), ("decoder", int(dec_w))):
    if w not in _HEADS:
      raise ValueError(f"{part} width {w} is not a released ViT size (512/768/1024): pass an "
                       f"explicit config with {part}_width/depth/heads")
  legacy = "decoder.ffn.2.weight" in flat
  vae = "quantize.embedding.weight" not in flat
  if legacy:
    pixel = ("pixel_quantize.embedding.weight", "pixel_decoder.conv_in.weight",
             "pixel_decoder.conv_out.weight")
    absent = [k for k in pixel if k not in flat]
    if absent:
      raise ValueError(f"this state dict has the legacy proxy-code head (decoder.ffn.2.weight) but "
                       f"not its MaskGIT-VQGAN pixel decoder (missing {absent}); the official "
                       f"legacy TiTok / One-D-Piece files hold both: convert the full checkpoint, or "
                       f"pass an explicit config")
  image_size = _image_size(flat, patch, image_size)
  cfg = dict(name="vae" if vae else "titok", image_size=image_size, patch_size=patch,
             encoder_width=enc_w, encoder_depth=_count(flat, r"encoder\.transformer\.(\d+)\."),
             encoder_heads=_HEADS[enc_w], decoder_width=int(dec_w),
             decoder_depth=_count(flat, r"decoder\.transformer\.(\d+)\."),
             decoder_heads=_HEADS[int(dec_w)], num_latent_tokens=int(flat["latent_tokens"].shape[0]),
             token_size=int(token_size), quantizer="vae" if vae else "vq", legacy_reshape=legacy,
             decoder_head="proxy_codes" if legacy else "pixels")
  if not vae:
    cfg.update(codebook_size=int(flat["quantize.embedding.weight"].shape[0]), use_l2_norm=legacy)
  if legacy:
    ch_out = int(flat["pixel_decoder.conv_out.weight"].shape[1])
    levels = _count(flat, r"pixel_decoder\.up\.(\d+)\.")
    mult = tuple(int(flat[f"pixel_decoder.up.{i}.block.0.conv1.weight"].shape[0]) // ch_out
                 for i in range(levels))
    cfg.update(pixel_ch=ch_out, pixel_ch_mult=mult,
               pixel_num_res_blocks=_count(flat, r"pixel_decoder\.mid\.(\d+)\."),
               pixel_z_channels=int(flat["pixel_decoder.conv_in.weight"].shape[1]),
               proxy_codebook_size=int(flat["decoder.ffn.2.weight"].shape[0]))
  return cfg


def resolve_config(config: Any, flat: Mapping[str, np.ndarray] | None = None) -> dict[str, Any]:
  """A jaxtok config from: a released name, a JSON file or string, a mapping (jaxtok config, or an
  official one with a "model" key), or None (inferred from `flat`)."""
  from jaxtok import convert
  cfg = convert.resolve_config(config, flat, released=RELEASED, aliases=ALIASES,
                               infer=infer_config, from_official=from_official)
  # Every released proxy-code (two-stage) model reshapes the encoder output the legacy way; the
  # other reshape gives the same shapes, so such a config would convert into a wrong model silently.
  if cfg.get("decoder_head") == "proxy_codes" and not cfg.get("legacy_reshape", False):
    raise ValueError("a TiTok config with decoder_head 'proxy_codes' needs legacy_reshape=True: "
                     "the official two-stage checkpoints (TiTok-S/B/L, One-D-Piece) all use the "
                     "legacy reshape, and without it the converted model decodes wrong images")
  return cfg


def load(path: str | os.PathLike, config: Any = None):
  """(jaxtok config, nnx.State of a `tokenizers.titok.TiTok`) from an official checkpoint file.

  config: see `resolve_config`. Raises ValueError naming every missing, unexpected or mis-shaped
  tensor (e.g. a config of the wrong size, or a file that is not a TiTok).
  """
  from jaxtok.tokenizers import api
  flat, _ = common.read_checkpoint(path)
  cfg = resolve_config(config, flat)
  tok = api.build(cfg)
  return cfg, common.fill_state(tok.abstract_params(), convert(flat, cfg), source=os.fspath(path))
