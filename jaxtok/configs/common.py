"""Shared config pieces: argument parsing and the training/mesh defaults every config starts from.

`get_config(arg)` in each config file takes a string like "size=S,tokens=128" or "tiny" and returns
an `ml_collections.ConfigDict`; `parse_arg` turns the string into typed values using the defaults'
types (booleans strictly), so a typo fails loudly.
"""
from __future__ import annotations

from typing import Any

import ml_collections

from jaxtok import sharding


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """Parses "k1=v1,k2=v2,flag" into a ConfigDict over `defaults` (a bare word sets a bool True).

  Raises:
    ValueError: for an unknown key or a value that does not parse as the default's type.
  """
  out = dict(defaults)
  for part in [p for p in (arg or "").split(",") if p.strip()]:
    key, _, value = part.partition("=")
    key = key.strip()
    if key not in defaults:
      raise ValueError(f"unknown config argument {key!r}; expected one of {sorted(defaults)}")
    if not _:
      if not isinstance(defaults[key], bool):
        raise ValueError(f"config argument {key!r} needs a value ({key}=...)")
      out[key] = True
      continue
    default = defaults[key]
    value = value.strip()
    if isinstance(default, bool):
      if value.lower() not in ("true", "false", "1", "0"):
        raise ValueError(f"config argument {key!r} must be true/false, got {value!r}")
      out[key] = value.lower() in ("true", "1")
    elif isinstance(default, int):
      try:
        out[key] = int(value)
      except ValueError:
        raise ValueError(f"config argument {key!r} must be an int, got {value!r}") from None
    elif isinstance(default, float):
      try:
        out[key] = float(value)
      except ValueError:
        raise ValueError(f"config argument {key!r} must be a float, got {value!r}") from None
    else:
      out[key] = value
  return ml_collections.ConfigDict(out)


def run_config() -> ml_collections.ConfigDict:
  """The fields every training config shares, tokenizer or generator: seed, schedule length,
  logging/checkpoint cadence, resume policy, EMA, the AdamW recipe (`optim`), `data.batch_size`
  (global), and the mesh. A config adds `model` (the network: `model.name` picks it) and the rest of
  `data`."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = 1000
  c.log_every = 50
  c.eval_every = 500
  c.ckpt_every = 500
  c.keep_checkpoints = 3
  c.step_delay_s = 0.0  # > 0 only in tests that interrupt a run between steps.
  # A resume whose config differs from the checkpoint's is refused ("error"); "resume" continues.
  c.on_config_change = "error"
  c.ema_decay = 0.999
  c.data = ml_collections.ConfigDict(dict(batch_size=32))
  c.optim = ml_collections.ConfigDict(dict(lr=1e-4, warmup_steps=100, end_lr=1e-5, b1=0.9, b2=0.99,
                                           eps=1e-8, wd=1e-4, clip=1.0, mu_dtype=None))
  # Mesh axes (data, fsdp, tensor); -1 takes the remaining devices. Rules map logical names to them.
  c.mesh = [("data", -1), ("fsdp", 1), ("tensor", 1)]
  c.sharding_rules = [list(r) for r in sharding.DEFAULT_RULES]
  return c


def base_config() -> ml_collections.ConfigDict:
  """A tokenizer's training config: `run_config` plus image data, losses, the optional
  discriminator and the evaluation token counts (the papers' AdamW recipe)."""
  c = run_config()
  c.final_eval = True
  # device_prefetch: batches transferred ahead of the step (`data.prefetch.DevicePrefetch`).
  c.data.update(source="photos", image_size=32, heldout=16, max_scale=4, device_prefetch=2)
  # perceptual_net / perceptual_weights / convnext_weights: `losses.perceptual.from_config` (the
  # network and the user's weights files; used only when perceptual > 0).
  c.loss = ml_collections.ConfigDict(dict(l1=0.0, l2=1.0, perceptual=0.0, proxy=0.0, gan=0.0,
                                          gan_start=0, disc_start=0, lecam=0.0, lecam_decay=0.999,
                                          perceptual_net="lpips_vgg16", perceptual_weights="",
                                          convnext_weights=""))
  c.disc = None
  c.disc_optim = None
  # REPA / semantic regularisation with a frozen DINOv2 (`losses.repa`), off (None); see add_repa
  # (it also gives the model its projector: repa_layer > 0).
  c.repa = None
  c.eval = ml_collections.ConfigDict(dict(token_counts=None))
  return c


def add_repa(c: ml_collections.ConfigDict, *, weights: str, layer: int, dim: int,
             hidden: int = 2048, weight: float = 0.5, prefix: str = "") -> None:
  """Turns on REPA / GigaTok semantic regularisation (`jaxtok.losses.repa`): the model gets a
  projector from its decoder block `layer` (model fields repa_layer, repa_hidden, repa_dim = `dim`,
  the DINOv2 width: 384 S, 768 B, 1024 L, 1536 g) and `config.repa` the loss weight (REPA and
  GigaTok: 0.5) and the path of the official DINOv2 weights file (required; never downloaded)."""
  c.model.update(repa_layer=layer, repa_hidden=hidden, repa_dim=dim)
  c.repa = ml_collections.ConfigDict(dict(weight=weight, weights=weights, prefix=prefix,
                                          dinov2=None))


def add_gan(c: ml_collections.ConfigDict, *, weight: float, start: int, lecam: float,
            disc_lr: float, channels: int = 64, num_layers: int = 3) -> None:
  """Turns on the PatchGAN discriminator (hinge + LeCAM, `jaxtok.nn.discriminator`): generator GAN
  weight `weight` and discriminator updates both from step `start`, the discriminator's own AdamW."""
  c.disc = ml_collections.ConfigDict(dict(channels=channels, num_layers=num_layers, norm="group",
                                          num_groups=32))
  c.disc_optim = ml_collections.ConfigDict(dict(
      lr=disc_lr, warmup_steps=c.optim.warmup_steps, end_lr=c.optim.end_lr, b1=c.optim.b1,
      b2=c.optim.b2, eps=1e-8, wd=c.optim.wd, clip=c.optim.clip, mu_dtype=None))
  c.loss.update(gan=weight, gan_start=start, disc_start=start, lecam=lecam)


def repa_args(c: ml_collections.ConfigDict, weights: str, layer: int, size: str, *,
              hidden: int) -> None:
  """The config arguments `repa=PATH,repa_layer=K,repa_size=S|B|L|g` of the tokenizer configs:
  `add_repa` with the DINOv2 width of `size` when a weights path is given; nothing otherwise.

  Raises:
    ValueError: for repa_layer without repa, repa without repa_layer >= 1, or an unknown size.
  """
  from jaxtok.nn import dinov2  # pylint: disable=g-import-not-at-top
  if not weights:
    if layer:
      raise ValueError(f"config argument repa_layer={layer} needs repa=PATH (the DINOv2 weights "
                       f"file), got none")
    return
  if layer < 1:
    raise ValueError(f"config argument repa={weights} needs repa_layer=K >= 1 (the decoder block "
                     f"whose output is aligned), got {layer}")
  if size not in dinov2.SIZES:
    raise ValueError(f"config argument repa_size must be one of {sorted(dinov2.SIZES)}, got {size!r}")
  add_repa(c, weights=weights, layer=layer, dim=dinov2.SIZES[size][0], hidden=hidden)


def tiny_training(c: ml_collections.ConfigDict, steps: int = 4) -> None:
  """Shrinks a config so it trains a few steps on CPU in seconds (big_vision's `runlocal`)."""
  c.total_steps = steps
  c.log_every = 1
  c.eval_every = steps
  c.ckpt_every = 2
  c.optim.warmup_steps = 1
  c.data.image_size = 16
  c.data.batch_size = 8
  c.data.heldout = 4
  if c.get("disc") is not None:  # a config with `add_gan`: a small discriminator that starts at once
    c.disc.update(channels=4, num_layers=2, num_groups=2)
    c.disc_optim.warmup_steps = 1  # within the few steps (the schedule refuses warmup > total)
    c.loss.update(gan_start=2, disc_start=2)


def l1_schedule(c: ml_collections.ConfigDict, *, total_steps: int, image_size: int, tokens: int,
                batch_size: int = 64, tiny: bool = False) -> None:
  """The paper-recipe schedule shared by GPSToken and Layton: total_steps at image_size, batch 64,
  an L1 pixel loss (no L2), evaluated at `tokens`; tiny: `tiny_training` on top."""
  c.total_steps = total_steps
  c.data.image_size = image_size
  c.data.batch_size = batch_size
  c.loss.update(l1=1.0, l2=0.0)
  c.eval.token_counts = [tokens]
  if tiny:
    tiny_training(c)


def generator_arg(arg: str | None, sizes: dict,
                  keys: tuple[str, ...] = ("tokens", "codebook", "classes")) -> tuple[dict, bool, tuple]:
  """(key=value dict of the given arguments, tiny flag, sizes[size]) of a generator config arg like
  "size=B,tokens=64" or "tiny". Valid names: size, data, tiny and `keys` (integer counts).

  Raises:
    ValueError: naming the valid arguments for an unknown one (a typo like "tokns=64" would
      otherwise be ignored), the valid sizes for an unknown size, or a count that is not an int.
  """
  a = parse_arg(arg, tiny=False, size="", data="", **{k: "" for k in keys})
  args = {k: v for k, v in a.items() if k != "tiny" and v != ""}
  for k in keys:
    if k in args:
      try:
        args[k] = int(args[k])
      except ValueError:
        raise ValueError(f"config argument {k!r} must be an int, got {args[k]!r}") from None
  size = "tiny" if a.tiny else args.get("size", "B")
  if size not in sizes:
    raise ValueError(f"config argument 'size' must be one of {sorted(sizes)}, got {size!r}")
  return args, bool(a.tiny), sizes[size]


def generator_base(args: dict, tiny: bool, *, batch_size: int, total_steps: int,
                   model: dict, optim: dict, sampling: dict) -> ml_collections.ConfigDict:
  """A generator's training config: `run_config` with `model`, the token dataset
  (`data.path`, `data.batch_size`), the optimizer and the `sampling` defaults (the tokenizer
  configs' dialect: `config.model`, `config.data.batch_size`, `config.ckpt_every`)."""
  c = run_config()
  c.model = ml_collections.ConfigDict(model)
  c.data.update(path=args.get("data", ""), batch_size=8 if tiny else batch_size)
  c.total_steps = 4 if tiny else total_steps
  c.ema_decay = 0.0 if tiny else 0.9999
  c.log_every = 1 if tiny else 100
  c.ckpt_every = 2 if tiny else 5000
  c.eval_every = c.total_steps  # generators have no periodic evaluation; kept for one dialect
  c.optim.update(optim)
  c.sampling = ml_collections.ConfigDict(sampling)
  return c
