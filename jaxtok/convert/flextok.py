"""Official FlexTok checkpoints (apple/ml-flextok, `model.safetensors` on the HF hub) -> jaxtok.

The release saves `FlexTok.state_dict()` with the hydra config of the whole model in the safetensors
metadata (one `str()`-ed Python literal per top-level key: vae, encoder, decoder, regularizer, ...).
This module reads both, derives a jaxtok config (`name="flextok"`, usable with
`jaxtok.tokenizers.api.build`), checks every tensor's name and shape and fills the parameters:

  official key (prefix encoder.module_dict. / decoder.module_dict.)     jaxtok parameter
  enc_patch_emb.patch_proj.{weight,bias}                                enc_patch (kernel = W.T)
  enc_posemb_module.posembs [1, W, Gh, Gw] (frozen sin-cos)             checked, not stored
  enc_register_module.registers [K, W]                                  registers
  enc_transformer.blocks.i.attn.{wq,wk,wv}.weight                       encoder.blocks.i.attn.qkv
                                                                        [W, 3, H, E] (fused)
  enc_transformer.blocks.i.attn.proj.weight                             encoder.blocks.i.attn.out
  enc_transformer.blocks.i.mlp.{fc1,fc3,fc2}.weight                     encoder.blocks.i.mlp.
                                                                        {gate,up,down}
  enc_to_latents.proj.{weight,bias}                                     enc_head
  dec_from_latents.proj                                                 dec_from_codes
  dec_registers_posemb_module.posembs [1, 1, W, K] (learnable_sum)      dec_register_pos [K, W]
  dec_nested_dropout.dropout_mask_token                                 mask_token
  dec_latent_dropout.nullcond (LearnedNullCond; ZeroNullCond: zeros)    null_cond
  dec_noise_patch_emb.patch_proj                                        dec_patch
  dec_patches_posemb_module.posembs                                     checked, not stored
  dec_time_embedder.mlp.{0,2}                                           time_fc1 / time_fc2
  dec_transformer.blocks.i.adaLN_modulation.1 (+ attn, mlp)             decoder.blocks.i.ada (+ ...)
  dec_to_patches.adaLN_modulation.1 / .proj                             dec_head_ada / dec_head
  vae.vae.* (diffusers AutoencoderKL)                                   vae.* (FlexTokVAE; the mid
                                                                        attention's to_{q,k,v} fused
                                                                        into attn.attn.qkv; the map
                                                                        is convert/ldm_vae.py's)

Linear weights are transposed ([out, in] -> [in, out]), convolutions go OIHW -> HWIO. Layouts the
jaxtok model cannot reproduce exactly (no QK-norm, a plain MLP, biases in attention, another
register mask, learned or interpolated patch positions, ...) are refused with a ValueError rather
than converted approximately.

Released models (`RELEASED`): EPFL-VILAB/flextok_d12_d12_in1k, flextok_d18_d18_in1k,
flextok_d18_d28_in1k, flextok_d18_d28_dfn. Their sizes here (width = 64 x depth, head_dim 64,
256 registers, 2x2 patches on the f8 VAE at 256 px, FSQ 8-8-8-5-5-5) come from the reference notes
and third-party copies of the configs, not from the checkpoints; the d12 width is inferred, and the
VAE's latent channels (16) and the released files' other settings were not checked here (no network).
Likewise the decoder's register positions are taken to be a 1D `learnable_sum` table and the null
condition a `LearnedNullCond` (ZeroNullCond is also handled); the module names follow third-party
quotes of the released configs. A real file laid out otherwise is refused with the offending
module or keys named, not converted. `load(..., name=...)` therefore compares the table with what the file itself says (its shapes and
embedded config) and raises on any disagreement, so a wrong entry cannot load silently.

Reading never unpickles (jaxtok.convert.common: safetensors parsed directly, or
`torch.load(weights_only=True)` with torch imported lazily).
"""
from __future__ import annotations

import ast
import math
import os
import re
from typing import Any, Callable, Mapping

import numpy as np

from jaxtok.convert import common, ldm_vae

# ----------------------------------------------------------------------------- released models

_RELEASE_COMMON = dict(image_size=256, patch_size=2, head_dim=64, mlp_ratio=4.0, num_tokens=256,
                       fsq_levels=(8, 8, 8, 5, 5, 5), vae_channels=(128, 256, 512, 512),
                       vae_layers_per_block=2, vae_norm_groups=32, vae_latent_channels=16)
RELEASED: dict[str, dict[str, Any]] = {
    "EPFL-VILAB/flextok_d12_d12_in1k": dict(_RELEASE_COMMON, enc_width=768, enc_depth=12,
                                            dec_width=768, dec_depth=12),
    "EPFL-VILAB/flextok_d18_d18_in1k": dict(_RELEASE_COMMON, enc_width=1152, enc_depth=18,
                                            dec_width=1152, dec_depth=18),
    "EPFL-VILAB/flextok_d18_d28_in1k": dict(_RELEASE_COMMON, enc_width=1152, enc_depth=18,
                                            dec_width=1792, dec_depth=28),
    "EPFL-VILAB/flextok_d18_d28_dfn": dict(_RELEASE_COMMON, enc_width=1152, enc_depth=18,
                                           dec_width=1792, dec_depth=28),
}

_ENC, _DEC, _VAE = "encoder.module_dict.", "decoder.module_dict.", "vae.vae."
# Fields checked against a RELEASED entry (image_size is a choice of the caller, not of the file).
_RELEASE_CHECKED = ("patch_size", "head_dim", "mlp_ratio", "num_tokens", "fsq_levels", "vae_channels",
                    "vae_layers_per_block", "vae_norm_groups", "vae_latent_channels", "enc_width",
                    "enc_depth", "dec_width", "dec_depth")


# ----------------------------------------------------------------------------- reading


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """(tensors, safetensors metadata) of an official checkpoint: `jaxtok.convert.common.read_checkpoint`
  (safetensors parsed directly, PyTorch files through torch.load(weights_only=True))."""
  return common.read_checkpoint(path)


def parse_metadata(metadata: Mapping[str, str]) -> dict[str, Any]:
  """The release's safetensors metadata -> its hydra config (a dict of plain Python values).

  Each value is a `str()` of a Python literal; it is parsed with `ast.literal_eval` (no code runs).
  Values that are not literals are kept as strings, as the release's own `parse_metadata` does.
  """
  out = {}
  for key, value in metadata.items():
    try:
      out[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      out[key] = value
  return out


# ----------------------------------------------------------------------------- configs


def _target(cfg: Mapping[str, Any]) -> str:
  return str(cfg.get("_target_", "")).rsplit(".", 1)[-1]


def _find(module_dict: Mapping[str, Any], cls: str, where: str, *,
          optional: bool = False) -> Mapping[str, Any] | None:
  hits = [(k, v) for k, v in module_dict.items() if isinstance(v, Mapping) and _target(v) == cls]
  if len(hits) > 1:
    raise ValueError(f"official {where} config has {len(hits)} {cls} modules "
                     f"({[k for k, _ in hits]}); expected one")
  if not hits:
    if optional:
      return None
    raise ValueError(f"official {where} config has no {cls} module (modules: {list(module_dict)})")
  return hits[0][1]


def _require(cond: bool, what: str) -> None:
  if not cond:
    raise ValueError(f"unsupported official FlexTok layout: {what}; jaxtok's FlexTok cannot "
                     f"reproduce it exactly")


def _check_trunk(cfg: Mapping[str, Any], where: str) -> None:
  for key, want in (("qkv_bias", False), ("proj_bias", False), ("mlp_bias", False),
                    ("gated_mlp", True), ("qk_norm", True)):
    _require(cfg.get(key, want) == want, f"{where} {key}={cfg.get(key)!r} (jaxtok: {want})")
  for key in ("act_layer", "norm_layer", "rope_forward_read_key", "score_mod_read_key"):
    _require(cfg.get(key) is None, f"{where} sets {key}={cfg.get(key)!r} (jaxtok: the default)")


def config_from_official(hydra: Mapping[str, Any]) -> dict[str, Any]:
  """jaxtok FlexTok fields from the release's hydra config (as `parse_metadata` returns it).

  Finds the modules by class (not by their key in the module dict), checks that every option jaxtok
  does not implement is at the value jaxtok reproduces, and returns the shape and behaviour fields:
  patch_size, enc/dec width and depth, head_dim, mlp_ratio, num_tokens, fsq_levels,
  nested_dropout_mode, cond_dropout, max_timestep, vae_latent_channels, vae_scaling_factor
  (when set), vae_sample_posterior, plus `null_cond` ("learned" / "zero") and `posemb_grid`.
  """
  for key in ("encoder", "decoder", "regularizer", "vae"):
    if not isinstance(hydra.get(key), Mapping):
      raise ValueError(f"official FlexTok config must have a {key!r} section, got keys {list(hydra)}")
  enc, dec = hydra["encoder"].get("module_dict"), hydra["decoder"].get("module_dict")
  if not isinstance(enc, Mapping) or not isinstance(dec, Mapping):
    raise ValueError("official FlexTok encoder/decoder configs must hold a 'module_dict'")
  out: dict[str, Any] = {}

  patch = _find(enc, "PatchEmbedder", "encoder")
  sizes = list(patch["patch_sizes"])
  _require(len(sizes) == 2 and sizes[0] == sizes[1], f"encoder patch_sizes {sizes} (square 2D only)")
  out["patch_size"] = int(sizes[0])
  dpatch = _find(dec, "PatchEmbedder", "decoder")
  _require(list(dpatch["patch_sizes"]) == sizes, f"decoder patch_sizes {dpatch['patch_sizes']} != "
           f"encoder {sizes}")
  def adders(md):
    return [v for v in md.values() if isinstance(v, Mapping)
            and _target(v) == "PositionalEmbeddingAdder"]

  enc_pos = adders(enc)
  _require(len(enc_pos) == 1, f"encoder has {len(enc_pos)} positional embeddings (jaxtok: 1)")
  dec_pos = adders(dec)
  sincos = [a for a in dec_pos if a.get("posemb_type", "sincos") == "sincos"]
  learned = [a for a in dec_pos if a.get("posemb_type", "sincos") != "sincos"]
  _require(len(sincos) == 1 and len(learned) == 1, f"decoder positional embeddings "
           f"{[a.get('posemb_type', 'sincos') for a in dec_pos]} (jaxtok: sincos for the patches, "
           f"learnable_sum for the registers)")
  reg = learned[0]
  _require(reg.get("posemb_type") == "learnable_sum" and len(reg["max_sizes"]) == 1
           and reg.get("posemb_scaling", "absolute") == "absolute",
           f"decoder register positions {reg.get('posemb_type')}/{reg.get('posemb_scaling')} over "
           f"{reg.get('max_sizes')} (jaxtok: 1D learnable_sum, absolute)")
  grids = []
  for where, pos in (("encoder", enc_pos[0]), ("decoder", sincos[0])):
    _require(pos.get("posemb_type", "sincos") == "sincos"
             and pos.get("posemb_scaling", "absolute") == "absolute",
             f"{where} patch positions {pos.get('posemb_type')}/{pos.get('posemb_scaling')} "
             f"(jaxtok: sincos, absolute)")
    grid = [int(g) for g in pos["max_sizes"]]
    _require(len(grid) == 2 and grid[0] == grid[1], f"{where} posemb max_sizes {grid} (square only)")
    grids.append(grid[0])
  _require(grids[0] == grids[1], f"encoder/decoder position grids differ: {grids}")
  out["posemb_grid"] = grids[0]

  regs = _find(enc, "Registers1D", "encoder")
  _require(regs.get("ordering_mode", "nested") == "nested",
           f"register ordering_mode {regs.get('ordering_mode')!r} (jaxtok: nested)")
  _require(regs.get("n_eval") in (None, regs["n_max"]), f"register n_eval {regs.get('n_eval')}")
  out["num_tokens"] = int(regs["n_max"])
  for where, md, mode in (("encoder", enc, "causal_last"), ("decoder", dec, "full")):
    packer = _find(md, "BlockWiseSequencePacker", where)
    _require(packer.get("mask_mode", "full") == mode,
             f"{where} mask_mode {packer.get('mask_mode')!r} (jaxtok: {mode!r})")
    keys = list(packer["input_list_read_keys"])
    _require(len(keys) == 2, f"{where} packs {keys} (jaxtok: [patches, registers])")
  dpacker = _find(dec, "BlockWiseSequencePacker", "decoder")
  _require(bool(dpacker.get("per_subseq_embs")), "decoder adaLN shared by patches and registers "
           "(jaxtok: per_subseq_embs=True)")

  etrunk, dtrunk = _find(enc, "FlexTransformer", "encoder"), _find(dec, "FlexTransformer", "decoder")
  _check_trunk(etrunk, "encoder")
  _check_trunk(dtrunk, "decoder")
  _require(etrunk.get("adaLN_emb_read_key") is None, "encoder with adaLN")
  _require(dtrunk.get("adaLN_emb_read_key") is not None and dtrunk.get("adaLN_expansion", 1) == 2,
           f"decoder adaLN_expansion {dtrunk.get('adaLN_expansion', 1)} (jaxtok: 2)")
  hd = int(etrunk.get("head_dim", 64))
  _require(int(dtrunk.get("head_dim", 64)) == hd, "encoder and decoder head_dim differ")
  mr = float(etrunk.get("mlp_ratio", 4.0))
  _require(float(dtrunk.get("mlp_ratio", 4.0)) == mr, "encoder and decoder mlp_ratio differ")
  out.update(enc_width=int(etrunk.get("dim", 768)), enc_depth=int(etrunk.get("depth", 12)),
             dec_width=int(dtrunk.get("dim", 768)), dec_depth=int(dtrunk.get("depth", 12)),
             head_dim=hd, mlp_ratio=mr)

  head = _find(enc, "LinearHead", "encoder")
  _require(head.get("adaLN_emb_read_key") is None and head.get("norm_layer", "default") is not None,
           "encoder head without LayerNorm or with adaLN")
  _require(not head.get("use_mup_readout", False), "encoder head with a muP readout")
  dhead = _find(dec, "ToPatchesLinearHead", "decoder")
  _require(dhead.get("adaLN_emb_read_key") is not None, "decoder head without adaLN")
  _require(not dhead.get("use_mup_readout", False), "decoder head with a muP readout")
  temb = _find(dec, "TimestepEmbedder", "decoder")
  _require(int(temb.get("frequency_embedding_size", 256)) == 256,
           f"time frequency_embedding_size {temb.get('frequency_embedding_size')} (jaxtok: 256)")
  _require(not temb.get("temb_as_tokens", False), "time embedding as tokens")
  out["max_timestep"] = float(temb.get("max_timestep", 1000.0))

  nd = _find(dec, "MaskedNestedDropout", "decoder")
  out["nested_dropout_mode"] = str(nd.get("size_sampling_mode", "uniform"))
  learned = _find(dec, "LearnedNullCond", "decoder", optional=True)
  zero = _find(dec, "ZeroNullCond", "decoder", optional=True)
  _require((learned is None) != (zero is None), "decoder needs exactly one null condition module")
  null = learned if learned is not None else zero
  if learned is not None:
    _require(not learned.get("replace_with_single_token", False), "null condition as a single token")
  out["null_cond"] = "learned" if learned is not None else "zero"
  out["cond_dropout"] = float(null.get("dropout_prob", 0.0))

  fsq = hydra["regularizer"]
  _require(_target(fsq) == "FSQ", f"regularizer {fsq.get('_target_')!r} (jaxtok: FSQ)")
  out["fsq_levels"] = tuple(int(v) for v in fsq["levels"])

  vae = hydra["vae"]
  _require(_target(vae) == "StableDiffusionVAE", f"vae {vae.get('_target_')!r}")
  out["vae_latent_channels"] = int(vae.get("latent_channels", 16))
  if vae.get("scaling_factor") is not None:
    out["vae_scaling_factor"] = float(vae["scaling_factor"])
  out["vae_sample_posterior"] = bool(vae.get("sample_posterior", True))
  return out


def infer_config(sd: Mapping[str, np.ndarray]) -> dict[str, Any]:
  """jaxtok FlexTok shape fields read off an official state dict (names as `convert` expects).

  Gives widths, depths, num_tokens, patch_size, mlp_ratio (when it is the release's 4), the VAE's
  channels / layers_per_block / latent_channels / mid attention and `posemb_grid`. head_dim, the
  VAE's GroupNorm groups and its scaling factor are not in the shapes (config or arguments).
  """
  def get(key):
    if key not in sd:
      raise ValueError(f"official FlexTok state dict has no {key!r} (is this a FlexTok checkpoint? "
                       f"it has {len(sd)} tensors, e.g. {sorted(sd)[:5]})")
    return sd[key]

  def depth(prefix):
    ids = {int(m.group(1)) for k in sd for m in [re.match(re.escape(prefix) + r"(\d+)\.", k)] if m}
    return max(ids) + 1 if ids else 0

  out: dict[str, Any] = {}
  out["enc_width"] = get(_ENC + "enc_patch_emb.patch_proj.weight").shape[0]
  out["dec_width"] = get(_DEC + "dec_noise_patch_emb.patch_proj.weight").shape[0]
  out["enc_depth"] = depth(_ENC + "enc_transformer.blocks.")
  out["dec_depth"] = depth(_DEC + "dec_transformer.blocks.")
  out["num_tokens"] = get(_ENC + "enc_register_module.registers").shape[0]
  latent = get(_VAE + "post_quant_conv.weight").shape[0]
  out["vae_latent_channels"] = latent
  patch_dim = get(_ENC + "enc_patch_emb.patch_proj.weight").shape[1]
  p = math.isqrt(patch_dim // latent)
  if p * p * latent != patch_dim:
    raise ValueError(f"encoder patch projection input {patch_dim} is not p*p*{latent} latent channels")
  out["patch_size"] = p
  out["posemb_grid"] = get(_ENC + "enc_posemb_module.posembs").shape[-1]
  hidden = get(_ENC + "enc_transformer.blocks.0.mlp.fc1.weight").shape[0]
  from jaxtok.tokenizers.flextok import swiglu_hidden
  if hidden == swiglu_hidden(out["enc_width"], 4.0):
    out["mlp_ratio"] = 4.0
  levels = sorted({int(m.group(1)) for k in sd
                   for m in [re.match(re.escape(_VAE) + r"encoder\.down_blocks\.(\d+)\.", k)] if m})
  out["vae_channels"] = tuple(
      int(get(f"{_VAE}encoder.down_blocks.{i}.resnets.0.conv1.weight").shape[0]) for i in levels)
  out["vae_layers_per_block"] = depth(_VAE + "encoder.down_blocks.0.resnets.")
  out["vae_mid_attention"] = any(k.startswith(_VAE + "encoder.mid_block.attentions.") for k in sd)
  return out


def jaxtok_config(sd: Mapping[str, np.ndarray], hydra: Mapping[str, Any] | None = None, *,
                  name: str | None = None, **overrides: Any) -> dict[str, Any]:
  """The jaxtok config (`name="flextok"` + FlexTok fields) for an official state dict.

  Shapes (`infer_config`) and the embedded hydra config (`config_from_official`, when given) must
  agree; a RELEASED `name` must agree with both. `overrides` set what neither says
  (`vae_scaling_factor` when the config leaves it to the VAE's own config, `vae_norm_groups` when not
  32, `image_size`, `head_dim` without a config) or choose inference options (`vae_sample_posterior`).
  `image_size` defaults to the largest the position tables cover: posemb_grid * patch * VAE factor.
  """
  cfg = infer_config(sd)
  extra: dict[str, Any] = {}
  if hydra is not None:
    official = config_from_official(hydra)
    for key in ("null_cond",):
      extra[key] = official.pop(key)
    for key, value in official.items():
      if key in cfg and cfg[key] != value:
        raise ValueError(f"official config says {key}={value!r} but the weights' shapes give "
                         f"{cfg[key]!r}")
      cfg[key] = value
  if name is not None:
    if name not in RELEASED:
      raise ValueError(f"unknown released FlexTok {name!r}; known: {sorted(RELEASED)}")
    for key in _RELEASE_CHECKED:
      want = RELEASED[name][key]
      have = cfg.get(key, overrides.get(key))
      if have is not None and have != want:
        raise ValueError(f"{name}: RELEASED table says {key}={want!r} but the checkpoint has "
                         f"{have!r}")
      cfg.setdefault(key, want)
  unknown = set(overrides) - set(_FIELDS) - {"null_cond"}
  if unknown:
    raise ValueError(f"unknown FlexTok config fields {sorted(unknown)}; known: {sorted(_FIELDS)}")
  for key, value in overrides.items():
    if key in ("null_cond",):
      extra[key] = value
    elif key in _SHAPE_FIELDS and key in cfg and cfg[key] != value:
      raise ValueError(f"{key}={value!r} disagrees with the checkpoint ({cfg[key]!r})")
    else:
      cfg[key] = value
  if extra.get("null_cond", "learned") not in ("learned", "zero"):
    raise ValueError(f"null_cond must be 'learned' or 'zero', got {extra['null_cond']!r}")
  if "vae_scaling_factor" not in cfg:
    raise ValueError("the VAE scaling factor is not in the checkpoint's config; pass "
                     "vae_scaling_factor= (the `scaling_factor` of the VAE's diffusers config)")
  cfg.setdefault("head_dim", 64)
  cfg.setdefault("vae_norm_groups", 32)
  grid = cfg.pop("posemb_grid")
  factor = 2 ** (len(cfg["vae_channels"]) - 1)
  cfg.setdefault("image_size", grid * cfg["patch_size"] * factor)
  if cfg["image_size"] > grid * cfg["patch_size"] * factor:
    raise ValueError(f"image_size {cfg['image_size']} needs more than the checkpoint's {grid}x{grid} "
                     f"position table (at most {grid * cfg['patch_size'] * factor})")
  out = {"name": "flextok", "use_vae": True, "zero_init_heads": True, **cfg}
  out["null_cond"] = extra.get("null_cond", "learned")
  return out


_SHAPE_FIELDS = ("enc_width", "enc_depth", "dec_width", "dec_depth", "num_tokens", "patch_size",
                 "vae_latent_channels", "vae_channels", "vae_layers_per_block", "vae_mid_attention")
_FIELDS = _SHAPE_FIELDS + ("image_size", "head_dim", "mlp_ratio", "fsq_levels", "nested_dropout_mode",
                           "cond_dropout", "max_timestep", "vae_scaling_factor",
                           "vae_sample_posterior", "vae_norm_groups")


# ----------------------------------------------------------------------------- the key map


def _lin(w: np.ndarray) -> np.ndarray:
  return np.asarray(w).T


# (official key, or a tuple of keys fused into one tensor; jaxtok path; transform of the arrays).
Entry = ldm_vae.Entry
_sources = ldm_vae.sources


def _qkv(heads: int) -> Callable[..., np.ndarray]:
  """q, k, v Linear weights [W_out, W_in] each -> nn.Attention's fused qkv [W_in, 3, H, E]."""
  return lambda q, k, v: np.stack([np.asarray(w).T for w in (q, k, v)], 1).reshape(
      q.shape[1], 3, heads, -1)


def _attn_out(heads: int) -> Callable[[np.ndarray], np.ndarray]:
  """Output Linear weight [W_out, W_in] -> nn.Attention's out [H, E, W_out]."""
  return lambda w: np.asarray(w).T.reshape(heads, -1, w.shape[0])


def _linear(src: str, dst: str, bias: bool = True) -> list[Entry]:
  out = [(src + ".weight", dst + ".kernel", _lin)]
  return out + [(src + ".bias", dst + ".bias", np.asarray)] if bias else out


def _block(src: str, dst: str, ada: bool, heads: int) -> list[Entry]:
  out = [(tuple(f"{src}.attn.{n}.weight" for n in ("wq", "wk", "wv")), f"{dst}.attn.qkv",
          _qkv(heads)),
         (f"{src}.attn.proj.weight", f"{dst}.attn.out", _attn_out(heads))]
  # The release's GatedMlp fc2(silu(fc1 x) * fc3 x) is nn.Mlp's down(silu(gate x) * up x).
  for name, ours in (("fc1", "gate"), ("fc2", "down"), ("fc3", "up")):
    out += _linear(f"{src}.mlp.{name}", f"{dst}.mlp.{ours}", bias=False)
  if ada:
    out += _linear(f"{src}.adaLN_modulation.1", f"{dst}.ada")
  return out


def key_map(cfg: Mapping[str, Any]) -> list[Entry]:
  """(official key, jaxtok parameter path with '.' separators, transform) for every stored tensor
  the jaxtok model takes, for a config from `jaxtok_config`."""
  e: list[Entry] = []
  e += _linear(_ENC + "enc_patch_emb.patch_proj", "enc_patch")
  e += [(_ENC + "enc_register_module.registers", "registers", np.asarray)]
  for i in range(cfg["enc_depth"]):
    e += _block(f"{_ENC}enc_transformer.blocks.{i}", f"encoder.blocks.{i}", ada=False,
                heads=cfg["enc_width"] // cfg["head_dim"])
  e += _linear(_ENC + "enc_to_latents.proj", "enc_head")
  e += _linear(_DEC + "dec_from_latents.proj", "dec_from_codes")
  k = cfg["num_tokens"]
  e += [(_DEC + "dec_registers_posemb_module.posembs", "dec_register_pos",
         lambda x: np.asarray(x)[0, 0, :, :k].T)]
  e += [(_DEC + "dec_nested_dropout.dropout_mask_token", "mask_token", np.asarray)]
  if cfg.get("null_cond", "learned") == "learned":
    e += [(_DEC + "dec_latent_dropout.nullcond", "null_cond", np.asarray)]
  e += _linear(_DEC + "dec_noise_patch_emb.patch_proj", "dec_patch")
  e += _linear(_DEC + "dec_time_embedder.mlp.0", "time_fc1")
  e += _linear(_DEC + "dec_time_embedder.mlp.2", "time_fc2")
  for i in range(cfg["dec_depth"]):
    e += _block(f"{_DEC}dec_transformer.blocks.{i}", f"decoder.blocks.{i}", ada=True,
                heads=cfg["dec_width"] // cfg["head_dim"])
  e += _linear(_DEC + "dec_to_patches.adaLN_modulation.1", "dec_head_ada")
  e += _linear(_DEC + "dec_to_patches.proj", "dec_head")

  e += ldm_vae.diffusers_entries(cfg["vae_channels"], cfg["vae_layers_per_block"],
                                 cfg.get("vae_mid_attention", True), src=_VAE, dst="vae.")
  return e


# Stored but not parameters of the jaxtok model: checked against jaxtok's tables instead.
_POSEMB_KEYS = (_ENC + "enc_posemb_module.posembs", _DEC + "dec_patches_posemb_module.posembs")


def check_posembs(sd: Mapping[str, np.ndarray], cfg: Mapping[str, Any], atol: float = 1e-4) -> None:
  """Raises ValueError unless the stored frozen sin-cos tables equal jaxtok's `sincos_2d`."""
  from jaxtok.nn.embeddings import sincos_2d
  for key, width in zip(_POSEMB_KEYS, (cfg["enc_width"], cfg["dec_width"])):
    table = np.asarray(sd[key], np.float32)
    if table.ndim != 4 or table.shape[:2] != (1, width) or table.shape[2] != table.shape[3]:
      raise ValueError(f"{key}: expected a square table [1, {width}, G, G], got {table.shape}")
    g = table.shape[2]
    ours = np.asarray(sincos_2d(g, g, width)).reshape(g, g, width).transpose(2, 0, 1)
    err = float(np.max(np.abs(table[0] - ours)))
    if err > atol:
      raise ValueError(f"{key}: the stored 2D sin-cos table differs from jaxtok's (max abs "
                       f"{err:.3g}); this layout is not supported")


def convert_state_dict(sd: Mapping[str, np.ndarray], cfg: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Official state dict -> {jaxtok parameter path: float32 array} for config `cfg`.

  Raises ValueError naming every missing and every unexpected official key (the release's VAE
  `logvar`, if present, and FSQ buffers are not parameters of either model).
  """
  sd = ldm_vae.rename_old_attention(sd)
  entries = key_map(cfg)
  used = {k for src, _, _ in entries for k in _sources(src)} | set(_POSEMB_KEYS)
  missing = sorted(k for k in used if k not in sd)
  unexpected = sorted(k for k in sd if k not in used)
  if missing or unexpected:
    lines = []
    if missing:
      lines.append(f"missing {len(missing)} official keys: {missing[:20]}"
                   + (" ..." if len(missing) > 20 else ""))
    if unexpected:
      lines.append(f"unexpected {len(unexpected)} official keys: {unexpected[:20]}"
                   + (" ..." if len(unexpected) > 20 else ""))
    raise ValueError("official FlexTok state dict does not match the config: " + "; ".join(lines))
  check_posembs(sd, cfg)
  if sd[_DEC + "dec_registers_posemb_module.posembs"].shape[-1] < cfg["num_tokens"]:
    raise ValueError(f"decoder register positions cover "
                     f"{sd[_DEC + 'dec_registers_posemb_module.posembs'].shape[-1]} < "
                     f"{cfg['num_tokens']} registers")
  out = {dst: np.asarray(fn(*(sd[k] for k in _sources(src))), np.float32)
         for src, dst, fn in entries}
  if cfg.get("null_cond", "learned") == "zero":
    out["null_cond"] = np.zeros((cfg["dec_width"],), np.float32)
  return out


# ----------------------------------------------------------------------------- loading


def to_params(flat: Mapping[str, np.ndarray], cfg: Mapping[str, Any]):
  """Fill an nnx.State of `jaxtok.tokenizers.api.build(cfg)` from `convert_state_dict`'s output,
  checking that every parameter is set exactly once with its shape."""
  from jaxtok.tokenizers import api
  tok = api.build({k: v for k, v in cfg.items() if k != "null_cond"})
  return tok, common.fill_state(tok.abstract_params(), flat, source="official FlexTok")


def load(path: str | os.PathLike, *, name: str | None = None, **overrides: Any):
  """(jaxtok config, Tokenizer, params) for an official FlexTok checkpoint file.

  The hydra config stored in a .safetensors file's metadata is used when present; `name` (a key of
  RELEASED) adds a check against the released sizes; `overrides` are as in `jaxtok_config`.
  """
  sd, metadata = read_checkpoint(path)
  hydra = parse_metadata(metadata) if metadata and "encoder" in metadata else None
  cfg = jaxtok_config(sd, hydra, name=name, **overrides)
  tok, params = to_params(convert_state_dict(sd, cfg), cfg)
  return cfg, tok, params
