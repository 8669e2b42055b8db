"""Latent-diffusion VAEs (Stable Diffusion's `AutoencoderKL`) -> `tokenizers.flextok_vae.FlexTokVAE`.

Two official layouts are read (the layout is recognised from the names):
  diffusers  `diffusion_pytorch_model.safetensors` (+ `config.json`) of e.g. stabilityai/sd-vae-ft-mse:
             encoder.down_blocks.N.resnets.M.{norm1,conv1,norm2,conv2,conv_shortcut},
             encoder.down_blocks.N.downsamplers.0.conv, {en,de}coder.mid_block.resnets.{0,1},
             {en,de}coder.mid_block.attentions.0.{group_norm,to_q,to_k,to_v,to_out.0} (Linear; the
             older diffusers names query/key/value/proj_attn are renamed as diffusers does),
             decoder.up_blocks.N.resnets.M, decoder.up_blocks.N.upsamplers.0.conv,
             {en,de}coder.{conv_in,conv_norm_out,conv_out}, quant_conv, post_quant_conv.
  ldm        the original CompVis/ldm names (sd-vae-ft-mse-original's .ckpt, or a whole Stable Diffusion
             checkpoint, whose `first_stage_model.` keys are taken and the rest ignored):
             encoder.down.N.block.M.{norm1,conv1,norm2,conv2,nin_shortcut}, encoder.down.N.downsample.conv,
             {en,de}coder.mid.{block_1,attn_1,block_2} (attn_1.{norm,q,k,v,proj_out}: 1x1 convs),
             decoder.up.N.block.M / upsample.conv with N the resolution level (diffusers' up_blocks in
             reverse order), {en,de}coder.{conv_in,norm_out,conv_out}, quant_conv, post_quant_conv.
             Keys under `loss.` (the LPIPS / discriminator of ldm's training wrapper) and the EMA
             bookkeeping scalars model_ema.decay / model_ema.num_updates (in the released
             vae-ft-*-pruned.ckpt files) are dropped; EMA weights (other model_ema.*) are refused.
ldm names are first renamed to diffusers names, then one key map (`diffusers_entries`, also used by
convert/flextok.py for FlexTok's VAE) fills the jaxtok parameters: convolutions OIHW -> HWIO, the
single-head attention's q/k/v fused into `nn.Attention`'s qkv [C, 3, 1, C].

FlexTokVAE is SD's VAE exactly (checked against diffusers 0.35.2 in tests/convert/test_ldm_vae.py):
GroupNorm(groups, eps 1e-6) + SiLU ResNet blocks with a 1x1 shortcut when the width changes, stride-2
3x3 downsampling after a (0, 1, 0, 1) pad, nearest x2 upsampling + 3x3 conv, a mid block with one
single-head attention (scale 1/sqrt(C), biases, residual), 1x1 quant_conv / post_quant_conv and a
diagonal Gaussian posterior (logvar clamped to [-30, 20]). Options diffusers has that FlexTokVAE does
not (no quant convs, a shift_factor, per-channel latents_mean/std, other block types or activations)
are refused with a ValueError, never converted approximately.

The converted config (name "ldm_vae"): channels, latent_channels, layers_per_block, norm_groups,
mid_attention (FlexTokVAE's fields) and scaling_factor (latents are multiplied by it for diffusion:
0.18215 for SD 1.x/2.x, 0.13025 for SDXL). Sizes come from config.json when given, else from the
tensor shapes; GroupNorm groups and the scaling factor are not in the shapes (defaults 32 and
0.18215, overridable).

  load(path, config=None) -> (config, nnx.State of FlexTokVAE)
  make_model(config, *, rngs) / abstract_params(config)
  read_weights(path) / load_into(vae, path, expected): a converted (or official) VAE as the frozen
    VAE of another model (Layton's `vae_checkpoint`), read once per file and usable while that
    model's constructor is traced.
"""
from __future__ import annotations

import functools
import json
import os
import re
from typing import Any, Callable, Mapping

import numpy as np

from jaxtok.convert import common

NAME = "ldm_vae"
_FIELDS = ("channels", "latent_channels", "layers_per_block", "norm_groups", "mid_attention",
           "scaling_factor")
_SD = dict(channels=(128, 256, 512, 512), latent_channels=4, layers_per_block=2, norm_groups=32,
           mid_attention=True)
# The released Stable Diffusion VAEs (their config.json values; no file is read or downloaded).
RELEASED: dict[str, dict[str, Any]] = {
    "stabilityai/sd-vae-ft-mse": dict(_SD, scaling_factor=0.18215),
    "stabilityai/sd-vae-ft-ema": dict(_SD, scaling_factor=0.18215),
    "stabilityai/sdxl-vae": dict(_SD, scaling_factor=0.13025),
}
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
SD_PREFIX = "first_stage_model."

# ----------------------------------------------------------------------------- configs


def check_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
  """The converted config with every field checked and typed; `name` optional. Unknown keys raise
  ValueError listing the valid ones."""
  cfg = dict(cfg)
  if cfg.pop("name", NAME) != NAME:
    raise ValueError(f"config name must be {NAME!r}, got {cfg.get('name')!r}")
  unknown = sorted(set(cfg) - set(_FIELDS))
  if unknown:
    raise ValueError(f"unknown ldm_vae config key(s) {unknown}; valid keys: {list(_FIELDS)}")
  missing = sorted(set(_FIELDS) - set(cfg))
  if missing:
    raise ValueError(f"ldm_vae config lacks {missing} (got {sorted(cfg)})")
  chans = cfg["channels"]
  if not isinstance(chans, (list, tuple)) or not chans or not all(
      isinstance(c, (int, np.integer)) and not isinstance(c, bool) and c > 0 for c in chans):
    raise ValueError(f"channels must be a non-empty sequence of positive ints, got {chans!r}")
  for key in ("latent_channels", "layers_per_block", "norm_groups"):
    v = cfg[key]
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
      raise ValueError(f"{key} must be a positive int, got {v!r}")
  if not isinstance(cfg["mid_attention"], (bool, np.bool_)):
    raise ValueError(f"mid_attention must be a bool, got {cfg['mid_attention']!r}")
  scale = cfg["scaling_factor"]
  if isinstance(scale, bool) or not isinstance(scale, (int, float, np.floating)) or not scale > 0:
    raise ValueError(f"scaling_factor must be a positive number, got {scale!r}")
  return dict(name=NAME, channels=[int(c) for c in chans], latent_channels=int(cfg["latent_channels"]),
              layers_per_block=int(cfg["layers_per_block"]), norm_groups=int(cfg["norm_groups"]),
              mid_attention=bool(cfg["mid_attention"]), scaling_factor=float(scale))


# diffusers AutoencoderKL config keys and the only values FlexTokVAE reproduces (None: any value).
_DIFFUSERS_FIXED = dict(in_channels=3, out_channels=3, act_fn="silu", shift_factor=None,
                        latents_mean=None, latents_std=None, use_quant_conv=True,
                        use_post_quant_conv=True)
_DIFFUSERS_FREE = ("block_out_channels", "layers_per_block", "latent_channels", "norm_num_groups",
                   "scaling_factor", "mid_block_add_attention", "down_block_types", "up_block_types",
                   "sample_size", "force_upcast")  # sample_size, force_upcast: no effect on the math


def config_from_diffusers(official: Mapping[str, Any]) -> dict[str, Any]:
  """A diffusers `AutoencoderKL` config.json (dict) -> the converted config. Keys starting with "_"
  are metadata; any other unknown key, and any option FlexTokVAE cannot reproduce, raises
  ValueError naming it."""
  cls = official.get("_class_name", "AutoencoderKL")
  if cls != "AutoencoderKL":
    raise ValueError(f"config.json describes a {cls!r}; expected an AutoencoderKL")
  unknown = sorted(k for k in official if not k.startswith("_")
                   and k not in _DIFFUSERS_FIXED and k not in _DIFFUSERS_FREE)
  if unknown:
    raise ValueError(f"config.json has AutoencoderKL option(s) {unknown} that jaxtok does not know; "
                     f"known: {sorted(_DIFFUSERS_FIXED) + list(_DIFFUSERS_FREE)}")
  for key, want in _DIFFUSERS_FIXED.items():
    got = official.get(key, want)
    if got != want:
      raise ValueError(f"config.json {key}={got!r}: FlexTokVAE reproduces only {key}={want!r}")
  chans = list(official.get("block_out_channels", (64,)))
  for key, block in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
    types = list(official.get(key, (block,)))
    if types != [block] * len(chans):
      raise ValueError(f"config.json {key}={types}: expected {len(chans)} x {block!r} (one per "
                       f"block_out_channels entry)")
  return check_config(dict(
      channels=chans, latent_channels=official.get("latent_channels", 4),
      layers_per_block=official.get("layers_per_block", 1),
      norm_groups=official.get("norm_num_groups", 32),
      mid_attention=official.get("mid_block_add_attention", True),
      scaling_factor=official.get("scaling_factor", 0.18215)))


def infer_config(flat: Mapping[str, np.ndarray], **defaults: Any) -> dict[str, Any]:
  """Sizes from a diffusers-named state dict's shapes; norm_groups and scaling_factor (not in the
  shapes) from `defaults` (else 32 and 0.18215, SD 1.x/2.x)."""
  def get(key):
    if key not in flat:
      raise ValueError(f"cannot read the VAE's sizes: tensor {key!r} is missing")
    return flat[key]
  levels = sorted({int(m.group(1)) for k in flat
                   for m in [re.match(r"encoder\.down_blocks\.(\d+)\.", k)] if m})
  if levels != list(range(len(levels))) or not levels:
    raise ValueError(f"encoder.down_blocks levels {levels} are not 0..L-1")
  chans = [int(get(f"encoder.down_blocks.{i}.resnets.0.conv1.weight").shape[0]) for i in levels]
  lpb = len({m.group(1) for k in flat
             for m in [re.match(r"encoder\.down_blocks\.0\.resnets\.(\d+)\.", k)] if m})
  unknown = sorted(set(defaults) - {"norm_groups", "scaling_factor"})
  if unknown:
    raise ValueError(f"infer_config takes only norm_groups and scaling_factor, got {unknown}")
  return check_config(dict(
      channels=chans, latent_channels=int(get("post_quant_conv.weight").shape[0]),
      layers_per_block=lpb, mid_attention=any(k.startswith("encoder.mid_block.attentions.")
                                              for k in flat),
      norm_groups=defaults.get("norm_groups", 32),
      scaling_factor=defaults.get("scaling_factor", 0.18215)))


# ----------------------------------------------------------------------------- layouts


def _ldm_rename(key: str, levels: int) -> str:
  """One CompVis/ldm VAE key -> its diffusers name (`levels`: number of resolution levels)."""
  k = re.sub(r"^encoder\.down\.(\d+)\.block\.(\d+)\.", r"encoder.down_blocks.\1.resnets.\2.", key)
  k = re.sub(r"^encoder\.down\.(\d+)\.downsample\.", r"encoder.down_blocks.\1.downsamplers.0.", k)
  # ldm numbers the decoder's levels by resolution (up.0 is the finest); diffusers by execution.
  k = re.sub(r"^decoder\.up\.(\d+)\.block\.(\d+)\.",
             lambda m: f"decoder.up_blocks.{levels - 1 - int(m.group(1))}.resnets.{m.group(2)}.", k)
  k = re.sub(r"^decoder\.up\.(\d+)\.upsample\.",
             lambda m: f"decoder.up_blocks.{levels - 1 - int(m.group(1))}.upsamplers.0.", k)
  k = re.sub(r"\.mid\.block_([12])\.", lambda m: f".mid_block.resnets.{int(m.group(1)) - 1}.", k)
  k = re.sub(r"\.mid\.attn_1\.(norm|q|k|v|proj_out)\.",
             lambda m: ".mid_block.attentions.0." + dict(norm="group_norm", q="to_q", k="to_k",
                                                          v="to_v", proj_out="to_out.0")[m.group(1)]
             + ".", k)
  k = re.sub(r"\.nin_shortcut\.", ".conv_shortcut.", k)
  return re.sub(r"^(encoder|decoder)\.norm_out\.", r"\1.conv_norm_out.", k)


# Older diffusers attention names, renamed on load as diffusers itself does.
_OLD_ATTN = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def rename_old_attention(sd: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """sd with diffusers' pre-0.14 mid-attention names (query/key/value/proj_attn) renamed to
  to_q/to_k/to_v/to_out.0 (any prefix)."""
  out = {}
  for k, v in sd.items():
    m = re.match(r"(.*\.mid_block\.attentions\.0\.)(query|key|value|proj_attn)\.(weight|bias)$", k)
    out[f"{m.group(1)}{_OLD_ATTN[m.group(2)]}.{m.group(3)}" if m else k] = v
  return out


# Scalars of ldm's EMA helper kept in the released VAE .ckpt files; not weights.
_LDM_BOOKKEEPING = ("model_ema.decay", "model_ema.num_updates")


def to_diffusers_names(sd: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], str]:
  """(state dict with diffusers names, the layout read: "diffusers" or "ldm").

  A whole Stable Diffusion checkpoint is reduced to its `first_stage_model.` tensors (prefix
  stripped); ldm's `loss.` tensors and EMA bookkeeping scalars are dropped; every other key is kept,
  so a foreign one is named by the key check that follows.
  """
  if any(k.startswith(SD_PREFIX) for k in sd):
    sd = {k[len(SD_PREFIX):]: v for k, v in sd.items() if k.startswith(SD_PREFIX)}
  if any(k.startswith(("encoder.down.", "encoder.mid.", "decoder.up.", "decoder.mid."))
         for k in sd):
    levels = len({m.group(1) for k in sd for m in [re.match(r"encoder\.down\.(\d+)\.", k)] if m})
    return {_ldm_rename(k, levels): v for k, v in sd.items()
            if not k.startswith("loss.") and k not in _LDM_BOOKKEEPING}, "ldm"
  return rename_old_attention(sd), "diffusers"


# ----------------------------------------------------------------------------- the key map

# (official key, or a tuple of keys fused into one tensor; jaxtok path; transform of the arrays).
Entry = tuple[Any, str, Callable[..., np.ndarray]]


def _conv(w: np.ndarray) -> np.ndarray:
  return np.asarray(w).transpose(2, 3, 1, 0)  # OIHW -> HWIO


def _linear_or_1x1(w: np.ndarray) -> np.ndarray:
  """A Linear weight [out, in] or a 1x1 conv weight [out, in, 1, 1] -> [in, out]."""
  w = np.asarray(w)
  if w.ndim == 4:
    if w.shape[2:] != (1, 1):
      raise ValueError(f"attention projection must be a Linear or a 1x1 conv, got shape {w.shape}")
    w = w[:, :, 0, 0]
  return w.T


def _conv_entries(src: str, dst: str) -> list[Entry]:
  return [(src + ".weight", dst + ".kernel", _conv), (src + ".bias", dst + ".bias", np.asarray)]


def _norm_entries(src: str, dst: str) -> list[Entry]:
  return [(src + ".weight", dst + ".scale", np.asarray), (src + ".bias", dst + ".bias", np.asarray)]


def _resnet_entries(src: str, dst: str, shortcut: bool) -> list[Entry]:
  out = _norm_entries(src + ".norm1", dst + ".norm1") + _conv_entries(src + ".conv1", dst + ".conv1")
  out += _norm_entries(src + ".norm2", dst + ".norm2") + _conv_entries(src + ".conv2", dst + ".conv2")
  return out + (_conv_entries(src + ".conv_shortcut", dst + ".shortcut") if shortcut else [])


def _qkv(q, k, v):
  """Single-head q, k, v weights -> nn.Attention's fused qkv [C_in, 3, 1, C]."""
  w = np.stack([_linear_or_1x1(x) for x in (q, k, v)], 1)
  return w.reshape(w.shape[0], 3, 1, w.shape[2])


def _mid_entries(src: str, dst: str, attention: bool) -> list[Entry]:
  out = _resnet_entries(src + ".resnets.0", dst + ".res1", False)
  out += _resnet_entries(src + ".resnets.1", dst + ".res2", False)
  if attention:
    a = src + ".attentions.0"
    qkv = ("to_q", "to_k", "to_v")
    out += _norm_entries(a + ".group_norm", dst + ".attn.norm")
    out += [(tuple(f"{a}.{n}.weight" for n in qkv), f"{dst}.attn.attn.qkv", _qkv),
            (tuple(f"{a}.{n}.bias" for n in qkv), f"{dst}.attn.attn.qkv_bias",
             lambda *b: np.stack([np.asarray(x) for x in b]).reshape(3, 1, -1)),
            (f"{a}.to_out.0.weight", f"{dst}.attn.attn.out", lambda w: _linear_or_1x1(w)[None]),
            (f"{a}.to_out.0.bias", f"{dst}.attn.attn.out_bias", np.asarray)]
  return out


def diffusers_entries(channels, layers_per_block: int, mid_attention: bool, *, src: str = "",
                      dst: str = "") -> list[Entry]:
  """Key map of a diffusers AutoencoderKL (names under `src`) onto a FlexTokVAE (paths under
  `dst`): (official key or keys, jaxtok path, transform) for every tensor."""
  chans, e = tuple(channels), []
  v, j = src + "encoder.", 0
  e += _conv_entries(v + "conv_in", dst + "enc_in")
  prev = chans[0]
  for i, c in enumerate(chans):
    for r in range(layers_per_block):
      e += _resnet_entries(f"{v}down_blocks.{i}.resnets.{r}", f"{dst}down.{j}", prev != c)
      prev, j = c, j + 1
    if i < len(chans) - 1:
      e += _conv_entries(f"{v}down_blocks.{i}.downsamplers.0.conv", f"{dst}down.{j}")
      j += 1
  e += _mid_entries(v + "mid_block", dst + "enc_mid", mid_attention)
  e += _norm_entries(v + "conv_norm_out", dst + "enc_norm") + _conv_entries(v + "conv_out",
                                                                            dst + "enc_out")
  e += _conv_entries(src + "quant_conv", dst + "quant_conv")
  e += _conv_entries(src + "post_quant_conv", dst + "post_quant_conv")
  v, j = src + "decoder.", 0
  e += _conv_entries(v + "conv_in", dst + "dec_in")
  e += _mid_entries(v + "mid_block", dst + "dec_mid", mid_attention)
  prev = chans[-1]
  for i, c in enumerate(chans[::-1]):
    for r in range(layers_per_block + 1):
      e += _resnet_entries(f"{v}up_blocks.{i}.resnets.{r}", f"{dst}up.{j}", prev != c)
      prev, j = c, j + 1
    if i < len(chans) - 1:
      e += _conv_entries(f"{v}up_blocks.{i}.upsamplers.0.conv", f"{dst}up.{j}")
      j += 1
  e += _norm_entries(v + "conv_norm_out", dst + "dec_norm") + _conv_entries(v + "conv_out",
                                                                            dst + "dec_out")
  return e


def _fmt(keys: list[str], limit: int = 20) -> str:
  return str(keys[:limit]) + (f" ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def sources(src: Any) -> tuple[str, ...]:
  """The official keys of an Entry's first element."""
  return src if isinstance(src, tuple) else (src,)


def convert(sd: Mapping[str, np.ndarray], cfg: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """A diffusers-named state dict -> {FlexTokVAE parameter path: float32 array} for `cfg`.

  Raises:
    ValueError naming every missing and unexpected official key, and every tensor whose shape
    does not fit the config (official key, its shape, the jaxtok parameter and the shape expected).
  """
  cfg = check_config(cfg)
  entries = diffusers_entries(cfg["channels"], cfg["layers_per_block"], cfg["mid_attention"])
  used = {k for s, _, _ in entries for k in sources(s)}
  missing, unexpected = sorted(used - set(sd)), sorted(set(sd) - used)
  if missing or unexpected:
    raise ValueError(f"official VAE state dict (diffusers names) does not match the config {cfg}: "
                     + "; ".join(([f"missing keys {_fmt(missing)}"] if missing else [])
                                 + ([f"unexpected keys {_fmt(unexpected)}"] if unexpected else [])))
  want = common.state_shapes(abstract_params(cfg))
  out, bad = {}, []
  for src, dst, fn in entries:
    arrays = [sd[k] for k in sources(src)]
    try:
      value = np.asarray(fn(*arrays), np.float32)
    except ValueError as e:
      bad.append(f"{'/'.join(sources(src))} {[list(np.shape(a)) for a in arrays]}: {e}")
      continue
    if value.shape != want[dst]:
      bad.append(f"{'/'.join(sources(src))} {[list(np.shape(a)) for a in arrays]} -> {dst} "
                 f"{list(value.shape)}, expected {list(want[dst])}")
    out[dst] = value
  if bad:
    raise ValueError(f"official VAE tensors do not fit the config {cfg}: {_fmt(bad)}")
  return out


# ----------------------------------------------------------------------------- the model


def make_model(cfg: Mapping[str, Any], *, rngs):
  """The FlexTokVAE of a converted config (scaling_factor is not a module field: the caller scales)."""
  from jaxtok.tokenizers import flextok_vae  # pylint: disable=g-import-not-at-top
  cfg = check_config(cfg)
  return flextok_vae.FlexTokVAE(channels=tuple(cfg["channels"]), latent_channels=cfg["latent_channels"],
                                layers_per_block=cfg["layers_per_block"],
                                norm_groups=cfg["norm_groups"], mid_attention=cfg["mid_attention"],
                                rngs=rngs)


def abstract_params(cfg: Mapping[str, Any]):
  """The abstract nnx.State of `make_model(cfg)` (shapes only, nothing allocated)."""
  return common.abstract_model(make_model, cfg)


def _read(path: str) -> tuple[dict[str, np.ndarray], dict | None]:
  """(tensors, the diffusers config.json or None) of a file or a diffusers model directory."""
  if os.path.isdir(path):
    weights = os.path.join(path, DIFFUSERS_WEIGHTS)
    if not os.path.isfile(weights):
      raise ValueError(f"{path} is a directory without {DIFFUSERS_WEIGHTS} (a diffusers VAE "
                       f"directory holds it and config.json)")
    cfg_path = os.path.join(path, "config.json")
    official = None
    if os.path.isfile(cfg_path):
      with open(cfg_path) as f:
        official = json.load(f)
    return common.read_checkpoint(weights)[0], official
  return common.read_checkpoint(path)[0], None


def resolve_config(config: Any, official: Mapping[str, Any] | None,
                   sd: Mapping[str, np.ndarray]) -> dict[str, Any]:
  """The converted config from `config` (None; a RELEASED name; a diffusers config.json as a path,
  JSON or mapping; or a mapping of converted-config fields, possibly partial: norm_groups /
  scaling_factor overrides) and the directory's config.json `official`, checked against the
  shapes of `sd` (diffusers names)."""
  overrides: dict[str, Any] = {}
  if config is not None:
    given = common.config_arg(config, RELEASED)
    if "block_out_channels" in given or "_class_name" in given:
      official = given
    else:
      overrides = {k: v for k, v in given.items() if k != "name"}
  shaped = infer_config(sd, **{k: overrides[k] for k in ("norm_groups", "scaling_factor")
                               if k in overrides})
  base = config_from_diffusers(official) if official is not None else shaped
  cfg = check_config({**base, **overrides})
  for key in ("channels", "latent_channels", "layers_per_block", "mid_attention"):
    if cfg[key] != shaped[key]:
      raise ValueError(f"the config says {key}={cfg[key]!r} but the tensors' shapes say "
                       f"{shaped[key]!r}")
  return cfg


def load(path: str | os.PathLike, config: Any = None):
  """(converted config, nnx.State of FlexTokVAE) of an official VAE: a diffusers directory
  (diffusion_pytorch_model.safetensors + config.json), or a .safetensors / .ckpt / .bin file in the
  diffusers or the ldm layout (a whole SD checkpoint's first_stage_model included). `config`: see
  `resolve_config`. Raises ValueError for a wrong file, naming the keys or shapes."""
  path = os.fspath(path)
  raw, official = _read(path)
  sd, _ = to_diffusers_names(raw)
  cfg = resolve_config(config, official, sd)
  return cfg, common.fill_state(abstract_params(cfg), convert(sd, cfg), source=path)


# ----------------------------------------------------------------------------- frozen use in models


def _is_converted(path: str) -> bool:
  return os.path.isdir(os.path.join(path, "params")) and os.path.isfile(
      os.path.join(path, "config.json"))


@functools.lru_cache(maxsize=4)
def _read_weights(path: str, stamp: tuple) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  del stamp  # part of the cache key only: a rewritten file is read again
  import jax  # pylint: disable=g-import-not-at-top
  if not _is_converted(path):  # numpy only: nothing here is traced when a constructor calls it
    raw, official = _read(path)
    sd, _ = to_diffusers_names(raw)
    cfg = resolve_config(None, official, sd)
    flat = convert(sd, cfg)
  else:
    from jaxtok.train import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
    from flax import nnx  # pylint: disable=g-import-not-at-top
    with open(os.path.join(path, "config.json")) as f:
      cfg = check_config(json.load(f))
    abstract = abstract_params(cfg)
    # Restored eagerly even while a model constructor is traced (jit / eval_shape of it); only the
    # restore runs under compile-time evaluation (an initialiser there would run op by op).
    with jax.ensure_compile_time_eval():
      params, _ = ckpt_lib.load_params(os.path.join(path, "params"), abstract, flag=path)
      flat = {".".join(str(k) for k in p): np.asarray(v.get_value())
              for p, v in nnx.to_flat_state(params)}
  for v in flat.values():
    v.flags.writeable = False  # shared by every caller through the cache
  return cfg, flat


def read_weights(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """(converted config, {FlexTokVAE parameter path: read-only float32 array}) of `path`: a directory
  written by `tools/convert.py --model ldm_vae` (params/ + config.json), or anything `load` reads
  (then the sizes come from the file; norm_groups 32 and scaling_factor 0.18215 unless its
  config.json says otherwise). Cached per path and modification time, and safe to call while a
  model constructor is being traced."""
  path = os.path.abspath(os.fspath(path))
  if not os.path.exists(path):
    raise ValueError(f"VAE checkpoint {path!r} does not exist (convert one with tools/convert.py "
                     f"--model ldm_vae)")
  st = os.stat(path if not _is_converted(path) else os.path.join(path, "config.json"))
  return _read_weights(path, (st.st_mtime_ns, st.st_size))


def load_into(vae, path: str | os.PathLike, expected: Mapping[str, Any]) -> None:
  """Sets every parameter of the FlexTokVAE `vae` (in place) from the VAE checkpoint `path`
  (`read_weights`). `expected`: the converted-config fields the caller built `vae` with (and its
  scaling_factor); any that differ from the checkpoint's raise ValueError naming them."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  cfg, flat = read_weights(path)
  want = check_config(expected)
  diff = [f"{k}: model {want[k]!r} vs checkpoint {cfg[k]!r}" for k in _FIELDS if want[k] != cfg[k]]
  if diff:
    raise ValueError(f"VAE checkpoint {os.fspath(path)!r} does not fit the model's VAE fields: "
                     + "; ".join(diff))
  nnx.update(vae, common.fill_state(nnx.state(vae, nnx.Param), flat, source=os.fspath(path)))
