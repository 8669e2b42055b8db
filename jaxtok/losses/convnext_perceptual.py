"""The ConvNeXt-S perceptual term of bytedance/1d-tokenizer's tokenizer recipes, with torchvision's
ConvNeXt as a frozen network whose trained weights are loaded from a file.

The released TiTok / TA-TiTok / MaskGen-tokenizer recipes train with `perceptual_loss:
lpips-convnext_s-1.0-0.1` (`modeling/modules/perceptual_loss.py`): for images x, y in [0, 1]

  convnext(x, y) = mean over [B, 1000] of (f(x) - f(y))^2,
  f(x) = ConvNeXt-S logits of (resize_224(x) - ImageNet mean) / ImageNet std,

resize_224 a bilinear resize with antialias (align_corners False) to 224 x 224, and the recipe's
term is the weighted average (1.0 * LPIPS + 0.1 * convnext) / (1.0 + 0.1) (`combined_loss`).

ConvNeXt (torchvision `models.convnext`, channels-last here): stem conv k4 s4 + LayerNorm; stages of
CNBlocks, x + gamma * Linear(GELU(Linear(LN(dwconv7x7(x))))) (exact GELU, LayerNorm eps 1e-6,
gamma the per-channel layer scale); between stages LayerNorm + conv k2 s2; head global average
pool, LayerNorm, Linear. ConvNeXt-S: widths (96, 192, 384, 768), depths (3, 3, 27, 3), 1000 classes.
Widths, depths and classes are read from the file, so any torchvision ConvNeXt loads (the tests use
a tiny one saved by torchvision).

Weights come from user files only (never a download): torchvision's state dict (`features.*`,
`classifier.*`, e.g. `convnext_small-0c510722.pth`) as safetensors, or a PyTorch file read with
`torch.load(..., weights_only=True)`; a prefix before `features.` (e.g. `convnext.` of the
1d-tokenizer PerceptualLoss module) is accepted. Untrained weights are refused, as for LPIPS.

Dimension names: B batch, H/W image size, C channels, K classes.
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxtok.losses.perceptual import load_state_dict, require_loaded

f32 = jnp.float32
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EPS = 1e-6  # torchvision ConvNeXt's LayerNorm / LayerNorm2d epsilon
RESIZE = 224  # the release resizes both images to 224 x 224 before the network

_KEY = re.compile(r"(?:^|\.)((?:features|classifier)\.[0-9][0-9a-z_.]*)$")


@dataclasses.dataclass(frozen=True)
class ConvNeXtWeights:
  """Loaded ConvNeXt weights (a pytree; `source` is static).

  stem: (conv kernel [4, 4, 3, C0], bias, ln scale, ln bias).
  stages: per stage, (downsample or None, blocks): downsample (ln scale, ln bias, conv kernel
    [2, 2, Cin, C], bias) before every stage but the first; blocks: tuples (dw kernel [7, 7, 1, C],
    dw bias, ln scale, ln bias, up kernel [C, 4C], up bias, down kernel [4C, C], down bias, gamma [C]).
  head: (ln scale, ln bias, kernel [C, K], bias [K]).
  """
  stem: tuple[jax.Array, ...]
  stages: tuple[tuple[Any, tuple[tuple[jax.Array, ...], ...]], ...]
  head: tuple[jax.Array, ...]
  source: str = dataclasses.field(default="", metadata=dict(static=True))


jax.tree_util.register_dataclass(ConvNeXtWeights, data_fields=["stem", "stages", "head"],
                                 meta_fields=["source"])


def _conv_kernel(w: np.ndarray) -> jax.Array:
  """torch [Cout, Cin/groups, kh, kw] -> HWIO."""
  return jnp.asarray(np.transpose(np.asarray(w, np.float32), (2, 3, 1, 0)))


def convnext_weights(state_dict: dict[str, Any], *, source: str = "state dict") -> ConvNeXtWeights:
  """`ConvNeXtWeights` from a torchvision ConvNeXt state dict ({name: array}); a missing, extra or
  misshapen key raises ValueError naming it."""
  sd: dict[str, np.ndarray] = {}
  for k, v in state_dict.items():
    m = _KEY.search(k)
    if m is None:
      raise ValueError(f"{source}: unexpected key {k!r} (expected torchvision ConvNeXt's "
                       "features.* / classifier.*)")
    sd[m.group(1)] = np.asarray(v, np.float32)
  used: set[str] = set()

  def take(name, ndim):
    if name not in sd:
      raise ValueError(f"{source}: missing key {name!r} of a torchvision ConvNeXt state dict")
    v = sd[name]
    if v.ndim != ndim:
      raise ValueError(f"{source}: {name!r} must have {ndim} dims, got shape {v.shape}")
    used.add(name)
    return v

  stem = (_conv_kernel(take("features.0.0.weight", 4)), jnp.asarray(take("features.0.0.bias", 1)),
          jnp.asarray(take("features.0.1.weight", 1)), jnp.asarray(take("features.0.1.bias", 1)))
  stages, i = [], 1
  while f"features.{i}.0.layer_scale" in sd:
    down = None
    if i > 1:
      down = (jnp.asarray(take(f"features.{i - 1}.0.weight", 1)),
              jnp.asarray(take(f"features.{i - 1}.0.bias", 1)),
              _conv_kernel(take(f"features.{i - 1}.1.weight", 4)),
              jnp.asarray(take(f"features.{i - 1}.1.bias", 1)))
    blocks, j = [], 0
    while f"features.{i}.{j}.layer_scale" in sd:
      p = f"features.{i}.{j}"
      blocks.append((_conv_kernel(take(f"{p}.block.0.weight", 4)),
                     jnp.asarray(take(f"{p}.block.0.bias", 1)),
                     jnp.asarray(take(f"{p}.block.2.weight", 1)),
                     jnp.asarray(take(f"{p}.block.2.bias", 1)),
                     jnp.asarray(take(f"{p}.block.3.weight", 2).T),
                     jnp.asarray(take(f"{p}.block.3.bias", 1)),
                     jnp.asarray(take(f"{p}.block.5.weight", 2).T),
                     jnp.asarray(take(f"{p}.block.5.bias", 1)),
                     jnp.asarray(take(f"{p}.layer_scale", 3).reshape(-1))))
      j += 1
    stages.append((down, tuple(blocks)))
    i += 2
  if not stages:
    raise ValueError(f"{source}: no ConvNeXt stage found (features.1.0.layer_scale missing)")
  head = (jnp.asarray(take("classifier.0.weight", 1)), jnp.asarray(take("classifier.0.bias", 1)),
          jnp.asarray(take("classifier.2.weight", 2).T), jnp.asarray(take("classifier.2.bias", 1)))
  extra = sorted(set(sd) - used)
  if extra:
    raise ValueError(f"{source}: keys not part of a torchvision ConvNeXt: {extra[:5]}"
                     f"{' ...' if len(extra) > 5 else ''}")
  return ConvNeXtWeights(stem=stem, stages=tuple(stages), head=head, source=source)


def load_convnext(path: str | os.PathLike) -> ConvNeXtWeights:
  """`ConvNeXtWeights` from a torchvision ConvNeXt weights file (safetensors or a PyTorch state
  dict, `losses.perceptual.load_state_dict`)."""
  return convnext_weights(load_state_dict(path), source=os.fspath(path))


def _require(weights: Any) -> ConvNeXtWeights:
  return require_loaded(weights, ConvNeXtWeights, "the ConvNeXt perceptual term", "load_convnext")


def _ln(x, scale, bias):
  mean = jnp.mean(x, -1, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), -1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + EPS) * scale + bias


def _conv(x, kernel, bias, stride, padding, groups=1):
  y = jax.lax.conv_general_dilated(x, kernel, (stride, stride), padding,
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                   feature_group_count=groups)
  return y + bias


def _block(x, p):
  dw, dwb, s, b, up, upb, down, downb, gamma = p
  h = _conv(x, dw, dwb, 1, ((3, 3), (3, 3)), groups=x.shape[-1])
  h = jax.nn.gelu(_ln(h, s, b) @ up + upb, approximate=False) @ down + downb
  return x + gamma * h


def convnext_features(weights: ConvNeXtWeights, x: jax.Array) -> list[jax.Array]:
  """Feature maps [B, h_i, w_i, C_i] after each stage, for a normalised input x [B, H, W, 3]."""
  weights = _require(weights)
  k, b, s, sb = weights.stem
  h = _ln(_conv(jnp.asarray(x, f32), k, b, 4, "VALID"), s, sb)
  feats = []
  for down, blocks in weights.stages:
    if down is not None:
      s, sb, k, b = down
      h = _conv(_ln(h, s, sb), k, b, 2, "VALID")
    for p in blocks:
      h = _block(h, p)
    feats.append(h)
  return feats


def convnext_logits(weights: ConvNeXtWeights, x: jax.Array) -> jax.Array:
  """Class logits [B, K] float32 for a normalised input x [B, H, W, 3] (torchvision's forward)."""
  weights = _require(weights)
  pooled = jnp.mean(convnext_features(weights, x)[-1], axis=(1, 2))
  s, sb, k, b = weights.head
  return _ln(pooled, s, sb) @ k + b


def resize_antialias(images: jax.Array, size: int) -> jax.Array:
  """images [B, H, W, C] -> [B, size, size, C]: bilinear, half-pixel centres, with a triangle
  filter widened by the scale when downsampling (torch's `interpolate(mode="bilinear",
  align_corners=False, antialias=True)`)."""
  images = jnp.asarray(images, f32)
  b, _, _, c = images.shape
  return jax.image.resize(images, (b, size, size, c), method="linear", antialias=True)


def _check_images(name: str, x: Any) -> None:
  shape = getattr(x, "shape", None)
  if shape is None or len(shape) != 4 or shape[-1] != 3:
    raise ValueError(f"{name} must be images [B, H, W, 3] in [0, 1], got shape {shape}")


def convnext_distance(weights: ConvNeXtWeights, x: jax.Array, y: jax.Array, *,
                      size: int = RESIZE) -> jax.Array:
  """The release's ConvNeXt term, a float32 scalar: mean squared difference of the logits of x and
  y [B, H, W, 3] in [0, 1] after `resize_antialias` to size and ImageNet normalisation (both images
  run as one batch)."""
  _check_images("x", x)
  _check_images("y", y)
  if tuple(x.shape) != tuple(y.shape):
    raise ValueError(f"x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
  both = resize_antialias(jnp.concatenate([x, y], 0), size)
  both = (both - jnp.asarray(IMAGENET_MEAN, f32)) / jnp.asarray(IMAGENET_STD, f32)
  logits = convnext_logits(weights, both)
  fx, fy = jnp.split(logits, 2)
  return jnp.mean(jnp.square(fx - fy))


def parse_net(name: str) -> tuple[float, float]:
  """(LPIPS weight, ConvNeXt weight) of a perceptual-network name in the release's form:
  "lpips_vgg16" (1, 0), "convnext_s" (0, 1), "lpips-convnext_s-A-B" (A, B)."""
  if name == "lpips_vgg16":
    return 1.0, 0.0
  if name == "convnext_s":
    return 0.0, 1.0
  m = re.fullmatch(r"lpips-convnext_s-([0-9.eE+-]+)-([0-9.eE+-]+)", str(name))
  if m:
    try:
      a, b = float(m.group(1)), float(m.group(2))
    except ValueError:
      m = None
    else:
      if a >= 0 and b >= 0 and a + b > 0:
        return a, b
  raise ValueError("config.loss.perceptual_net must be one of 'lpips_vgg16', 'convnext_s', "
                   f"'lpips-convnext_s-A-B' (A, B >= 0 weights, A + B > 0), got {name!r}")


def combined_loss(weights: dict, x: jax.Array, y: jax.Array, *, lpips_weight: float,
                  convnext_weight: float, size: int = RESIZE) -> jax.Array:
  """(a * LPIPS + b * convnext) / (a + b) as `PerceptualLoss.forward` (a float32 scalar); weights
  {"lpips": LPIPSWeights, "convnext": ConvNeXtWeights}, each needed only when its weight is > 0."""
  from jaxtok.losses import perceptual  # pylint: disable=g-import-not-at-top
  total = jnp.zeros((), f32)
  if lpips_weight > 0:
    total = total + lpips_weight * perceptual.lpips_loss(weights["lpips"], x, y)
  if convnext_weight > 0:
    total = total + convnext_weight * convnext_distance(weights["convnext"], x, y, size=size)
  return total / (lpips_weight + convnext_weight)


def from_paths(net: str, lpips_paths: str | Sequence[str] | None,
               convnext_path: str | None) -> tuple[Any, dict]:
  """(perceptual_fn(weights, x, x^) -> scalar, weights) for network name `net` (`parse_net`)."""
  import functools  # pylint: disable=g-import-not-at-top
  from jaxtok.losses import perceptual  # pylint: disable=g-import-not-at-top
  a, b = parse_net(net)
  weights = {}
  if a > 0:
    if not lpips_paths:
      raise ValueError(f"config.loss.perceptual_net={net!r} needs config.loss.perceptual_weights: "
                       "the LPIPS-VGG16 weights file(s), got none")
    weights["lpips"] = perceptual.load_lpips_vgg16(lpips_paths)
  if b > 0:
    if not convnext_path:
      raise ValueError(f"config.loss.perceptual_net={net!r} needs config.loss.convnext_weights: "
                       "torchvision's ConvNeXt-S weights file (e.g. convnext_small-0c510722.pth or "
                       "its safetensors), got none")
    weights["convnext"] = load_convnext(convnext_path)
  return functools.partial(combined_loss, lpips_weight=a, convnext_weight=b), weights
