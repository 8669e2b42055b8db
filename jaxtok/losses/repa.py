"""REPA (Yu et al. 2025, sihyun-yu/REPA) and GigaTok's semantic regularisation: align a decoder's
intermediate features, through an MLP projector, with frozen DINOv2 patch features.

Both references compute the same loss (REPA `train.py`/`loss.py`, GigaTok `vq/vq_loss.py`):

  proj_loss = mean over the batch of mean over tokens of -cos(h_i, f_i)

with h the projected decoder features [B, N, D] and f DINOv2's `x_norm_patchtokens` [B, N, D] of the
clean image, both l2-normalised as F.normalize does (x / max(|x|, 1e-12)); it lies in [-1, 1] and
is -1 when aligned. It is added with a weight (REPA proj_coeff 0.5, GigaTok proj_weight 0.5).

The projector (`Projector`) is REPA's `build_mlp` and GigaTok's `distill_mlp`: Linear(W -> M), SiLU,
Linear(M -> M), SiLU, Linear(M -> D); REPA uses M = 2048, GigaTok M = 4W. It belongs to the model
being trained (its parameters are the model's), so models build it from their own fields
(`repa_layer`, `repa_hidden`, `repa_dim`) and return the projected features from `train_forward(...,
features=True)` as `TrainOutput.features`.

The grid. DINOv2 patches are 14 px, the decoders' tokens cover 16 px (or a latent patch); neither
reference interpolates features. Both resize the image instead: REPA / GigaTok `preprocess_raw_image`
maps [-1, 1] to [0, 1], normalises with the ImageNet mean/std and calls
`F.interpolate(x, 224 * (resolution // 256), mode="bicubic")` (torch's plain bicubic, align_corners
False, no antialias), so a 256 px image gives DINOv2 a 16 x 16 grid, exactly the decoder's 16 x 16
tokens, compared one to one (GigaTok asserts equal shapes). `teacher_features` does the same for any
square decoder grid g: the image is resized to g * 14 px (for 256 px and g = 16: 224, as they do),
so DINOv2 returns g * g patch features in the decoder's row-major order. (Resizing before or after the
normalisation is the same: bicubic rows sum to 1.)

The train step (`train.step`) computes the DINOv2 features under stop_gradient from parameters held
in `frozen["repa"]` (never in the train state, never updated) and adds
`repa.weight * alignment_loss(features, targets)` as the metric `loss/repa`.

Config (`config.repa`, None = off in every tokenizer config; `configs.common.add_repa`, or the
config arguments repa=PATH,repa_layer=K,repa_size=S|B|L|g, set it and the model fields; weight 0
is off too):
  weight    the loss weight (> 0 to train with it)
  weights   path of the official DINOv2 weights (`.pth` via torch.load(weights_only=True), or
            `.safetensors`); required: nothing is downloaded
  prefix    key prefix inside the file ("" for the hub files)
  dinov2    None, or a mapping of `nn.dinov2` fields overriding what the file's shapes say
"""
from __future__ import annotations

import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtok.nn.dense import Dense

KEYS = ("weight", "weights", "prefix", "dinov2")
WEIGHTS_HELP = ("an official DINOv2 weights file, e.g. dinov2_vitb14_reg4_pretrain.pth (GigaTok: "
                "DINOv2-B; FlexTok: DINOv2-L, dinov2_vitl14_reg4_pretrain.pth), from "
                "https://dl.fbaipublicfiles.com/dinov2/<model>/<model>_pretrain.pth as listed in the "
                "facebookresearch/dinov2 README; jaxtok never downloads it")


def alignment_loss(features: jax.Array, targets: jax.Array, eps: float = 1e-12) -> jax.Array:
  """mean_b mean_n -cos(features[b, n], targets[b, n]) in float32: features, targets [B, N, D].

  Raises:
    ValueError: if the shapes differ (naming both).
  """
  if features.shape != targets.shape or features.ndim != 3:
    raise ValueError(f"features and targets must both be [B, N, D] of one shape, got "
                     f"{tuple(features.shape)} and {tuple(targets.shape)}")
  unit = lambda x: x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)
  h, f = unit(features.astype(jnp.float32)), unit(targets.astype(jnp.float32))
  return jnp.mean(-jnp.sum(h * f, axis=-1))


class Projector(nnx.Module):
  """REPA's MLP projector [..., W] -> [..., D]: Dense(W, M), SiLU, Dense(M, M), SiLU, Dense(M, D)."""

  def __init__(self, width: int, hidden: int, out: int, *, dtype=jnp.float32, rngs: nnx.Rngs):
    for name, v in (("width", width), ("hidden", hidden), ("out", out)):
      if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"Projector {name} must be an int >= 1, got {v!r}")
    self.fc1 = Dense(width, hidden, ("embed", "mlp"), dtype=dtype, rngs=rngs)
    self.fc2 = Dense(hidden, hidden, (None, "mlp"), dtype=dtype, rngs=rngs)
    self.fc3 = Dense(hidden, out, ("mlp", None), dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.fc3(jax.nn.silu(self.fc2(jax.nn.silu(self.fc1(x))))).astype(jnp.float32)


def check_model_fields(layer: int, depth: int, hidden: int, dim: int, *, model: str) -> None:
  """Raises ValueError unless 0 <= layer <= depth (0 = no projector) and hidden, dim >= 1."""
  if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer <= depth:
    raise ValueError(f"{model} repa_layer must be an int in [0, {depth}] (0 = off; the decoder "
                     f"block whose output is aligned), got {layer!r}")
  for name, v in (("repa_hidden", hidden), ("repa_dim", dim)):
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
      raise ValueError(f"{model} {name} must be an int >= 1, got {v!r}")


def settings(section: Any) -> dict | None:
  """The validated `config.repa` block ({weight, weights, prefix, dinov2}) or None when it is unset
  or its weight is 0.

  Raises:
    TypeError: for a section that is not a mapping.
    ValueError: for unknown keys, a negative weight, or weight > 0 without a weights file.
  """
  if section is None:
    return None
  if not hasattr(section, "items"):
    raise TypeError(f"config.repa must be a dict of {KEYS}, got {type(section).__name__}")
  cfg = dict(section.items())
  unknown = sorted(set(cfg) - set(KEYS))
  if unknown:
    raise ValueError(f"config.repa has unknown keys {unknown}; valid keys: {list(KEYS)}")
  weight = cfg.get("weight") or 0.0
  if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
    raise ValueError(f"config.repa.weight must be a number >= 0, got {weight!r}")
  if weight == 0:
    return None
  path = cfg.get("weights")
  if not path:
    raise ValueError(f"config.repa.weight = {weight} needs config.repa.weights: the path of "
                     f"{WEIGHTS_HELP}; got {path!r}")
  dinov2 = cfg.get("dinov2")
  if dinov2 is not None and not hasattr(dinov2, "items"):
    raise TypeError(f"config.repa.dinov2 must be None or a mapping of DINOv2 fields, got "
                    f"{type(dinov2).__name__}")
  return dict(weight=float(weight), weights=str(path), prefix=str(cfg.get("prefix") or ""),
              dinov2=None if dinov2 is None else dict(dinov2.items()))


def teacher_features(model_fn: Callable, params: Any, images: jax.Array, grid: int,
                     patch_size: int) -> jax.Array:
  """DINOv2 x_norm_patchtokens float32 [B, grid*grid, D] of images [B, H, W, 3] in [0, 1], resized
  (torch bicubic) to grid * patch_size px first, under stop_gradient."""
  from jaxtok.nn import dinov2  # pylint: disable=g-import-not-at-top
  side = grid * patch_size
  x = dinov2.resize_bicubic(images, (side, side))
  return jax.lax.stop_gradient(model_fn(params, x)["x_norm_patchtokens"])


def load_teacher(cfg: dict) -> tuple[Callable, Any, dict]:
  """(teacher_fn(params, images, grid) -> [B, grid*grid, D], params, dinov2 config) from the
  settings of `settings` (the weights file is read here; ValueError if it is missing)."""
  from jaxtok.convert import dinov2 as convert_dinov2  # pylint: disable=g-import-not-at-top
  from jaxtok.nn import dinov2  # pylint: disable=g-import-not-at-top
  if not os.path.isfile(cfg["weights"]):
    raise ValueError(f"config.repa.weights {cfg['weights']!r} does not exist: it must be the path of "
                     f"{WEIGHTS_HELP}")
  dcfg, params = convert_dinov2.load(cfg["weights"], cfg.get("dinov2"), prefix=cfg.get("prefix", ""))
  model_fn, patch = dinov2.features_fn(dcfg), int(dcfg["patch_size"])

  def teacher_fn(p, images, grid):
    return teacher_features(model_fn, p, images, grid, patch)

  teacher_fn.width = int(dcfg["width"])
  return teacher_fn, params, dcfg
