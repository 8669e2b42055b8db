"""Perceptual losses over a feature network whose trained weights are loaded from a file.

Generic form (LPIPS, Zhang et al. 2018): for feature maps f_l(x), f_l(y) [B, h_l, w_l, C_l] of layers
l = 1..L,

  d(x, y) = sum_l  mean_{h, w}  sum_c  w_{l, c} * (n(f_l(x)) - n(f_l(y)))_c^2 ,
  n(f) = f / (||f||_2 over channels + 1e-10)

with w_{l, c} = 1 when no linear weights are given (the "baseline" LPIPS). `perceptual_distance`
gives d per image [B]; `perceptual_loss` its batch mean. `feature_fn(images) -> [f_1, ..., f_L]` is
any network; it is called once on x and y stacked along the batch.

LPIPS-VGG16 (`load_lpips_vgg16`, `lpips_vgg16`): the official `lpips` package's v0.1 network,
  images in [0, 1] -> 2x - 1 -> (x - shift) / scale, shift (-.030, -.088, -.188), scale (.458, .448,
  .450) -> torchvision VGG16 `features` convs (3x3, padding 1, ReLU), 2x2 max-pools before the 2nd..5th
  slices -> the five ReLU outputs relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 -> the formula above
  with the five learned non-negative linear layers (1x1 convs without bias).
Weights come from user-provided files only, never a download: safetensors or PyTorch state dicts
(`torch.load(..., weights_only=True)`, needs torch) in the layouts
  backbone  torchvision `features.{i}.weight|bias` (i in 0, 2, 5, ..., 28), or the lpips module's
            `net.slice{k}.{i}.weight|bias` (same i; any prefix before `features.` / `net.`),
  linear    the lpips module's `lin{k}.model.1.weight` [1, C, 1, 1] (`lin{k}.model.0.weight` without
            dropout), as in the package's `weights/v0.1/vgg.pth`,
in one file or several (e.g. torchvision's VGG16 file and lpips' vgg.pth). Widths are read from the
file and checked for consistency, so a narrow network in the same layout loads too (tests).

A perceptual network with untrained weights measures nothing perceptual, so the LPIPS functions
refuse anything but weights made by `load_lpips_vgg16` (ValueError).
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

f32 = jnp.float32
EPS = 1e-10

FeatureFn = Callable[[jax.Array], Sequence[jax.Array]]


# --------------------------------------------------------------------------------------------------
# The generic distance.


def normalize_channels(features: jax.Array, eps: float = EPS) -> jax.Array:
  """features / (l2 norm over the last (channel) axis + eps), in float32."""
  f = jnp.asarray(features, f32)
  return f / (jnp.sqrt(jnp.sum(jnp.square(f), axis=-1, keepdims=True)) + eps)


def layer_distance(fx: jax.Array, fy: jax.Array, weight: jax.Array | None = None) -> jax.Array:
  """Per-image distance [B] of one layer: spatial mean of sum_c w_c (n(fx) - n(fy))_c^2.

  Args:
    fx, fy: feature maps [B, h, w, C] (or [B, C]: no spatial axes).
    weight: optional per-channel weights [C] (LPIPS' linear layer); None sums the channels.
  """
  if fx.shape != fy.shape:
    raise ValueError(f"feature maps must have equal shapes, got {fx.shape} and {fy.shape}")
  if fx.ndim < 2:
    raise ValueError(f"feature maps must be [B, ..., C], got shape {fx.shape}")
  d = jnp.square(normalize_channels(fx) - normalize_channels(fy))
  if weight is None:
    d = jnp.sum(d, axis=-1)
  else:
    weight = jnp.asarray(weight, f32)
    if weight.shape != (fx.shape[-1],):
      raise ValueError(f"layer weight must have shape ({fx.shape[-1]},) (the feature channels), got "
                       f"{weight.shape}")
    d = d @ weight
  return jnp.mean(d.reshape(d.shape[0], -1), axis=-1)


def perceptual_distance(feature_fn: FeatureFn, x: jax.Array, y: jax.Array,
                        weights: Sequence[jax.Array | None] | None = None) -> jax.Array:
  """Per-image perceptual distance [B] float32 (module docstring), summed over the feature layers.

  Args:
    feature_fn: images [2B, H, W, 3] -> sequence of L feature maps [2B, h_l, w_l, C_l].
    x, y: images [B, H, W, 3] (whatever range feature_fn expects; LPIPS here takes [0, 1]).
    weights: None, or L per-channel weight vectors [C_l] (an entry may be None).
  """
  if not callable(feature_fn):
    raise TypeError(f"feature_fn must be callable, got {type(feature_fn).__name__}")
  if x.shape != y.shape:
    raise ValueError(f"x and y must have equal shapes, got {x.shape} and {y.shape}")
  b = x.shape[0]
  feats = list(feature_fn(jnp.concatenate([x, y], axis=0)))
  if not feats:
    raise ValueError("feature_fn returned no feature maps")
  if weights is not None and len(weights) != len(feats):
    raise ValueError(f"weights must hold one entry per feature layer ({len(feats)}), got {len(weights)}")
  total = jnp.zeros((b,), f32)
  for i, f in enumerate(feats):
    total = total + layer_distance(f[:b], f[b:], None if weights is None else weights[i])
  return total


def perceptual_loss(feature_fn: FeatureFn, x: jax.Array, y: jax.Array,
                    weights: Sequence[jax.Array | None] | None = None) -> jax.Array:
  """Batch mean of `perceptual_distance`: a float32 scalar."""
  return jnp.mean(perceptual_distance(feature_fn, x, y, weights))


# --------------------------------------------------------------------------------------------------
# Weight files.


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """{name: array} of a safetensors file, or a PyTorch state dict (`.pt`, `.pth`, `.bin`, `.ckpt`)
  read with `torch.load(path, map_location="cpu", weights_only=True)` (needs torch installed)."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise ValueError(f"weights file not found: {path!r}")
  ext = os.path.splitext(path)[1].lower()
  if ext == ".safetensors":
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    return {k: np.asarray(v) for k, v in load_file(path).items()}
  if ext in (".pt", ".pth", ".bin", ".ckpt"):
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise ValueError(f"{path!r} is a PyTorch file, which needs torch installed to read; convert it "
                       "to .safetensors or install torch") from None
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
      sd = sd["state_dict"]
    if not isinstance(sd, dict):
      raise ValueError(f"{path!r} must hold a state dict (name -> tensor), got {type(sd).__name__}")
    return {k: v.detach().float().numpy() for k, v in sd.items() if hasattr(v, "detach")}
  raise ValueError(f"weights file must end in .safetensors, .pt, .pth, .bin or .ckpt, got {path!r}")


# --------------------------------------------------------------------------------------------------
# LPIPS-VGG16.

# torchvision vgg16().features indices of the 3x3 convolutions, grouped by the lpips slices.
VGG16_SLICES: tuple[tuple[int, ...], ...] = ((0, 2), (5, 7), (10, 12, 14), (17, 19, 21), (24, 26, 28))
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)

_BACKBONE = (re.compile(r"(?:^|\.)features\.(\d+)\.(weight|bias)$"),
             re.compile(r"(?:^|\.)net\.slice[1-5]\.(\d+)\.(weight|bias)$"))
_LIN = re.compile(r"(?:^|\.)lin([0-9])\.model\.([01])\.weight$")


@dataclasses.dataclass(frozen=True)
class LPIPSWeights:
  """Loaded LPIPS-VGG16 weights (a pytree; `source` names the files and is static).

  convs: 13 (kernel [3, 3, Cin, Cout] float32, bias [Cout]) in VGG16 order.
  lins: 5 per-channel weights [C_k] (the linear layers).
  """
  convs: tuple[tuple[jax.Array, jax.Array], ...]
  lins: tuple[jax.Array, ...]
  source: str = ""


jax.tree_util.register_dataclass(LPIPSWeights, data_fields=["convs", "lins"], meta_fields=["source"])


def _lpips_entries(sd: dict[str, np.ndarray], where: str) -> tuple[dict, dict]:
  convs: dict[tuple[int, str], tuple[str, np.ndarray]] = {}
  lins: dict[int, tuple[str, np.ndarray]] = {}
  valid = {i for s in VGG16_SLICES for i in s}
  for key, value in sd.items():
    for pattern in _BACKBONE:
      m = pattern.search(key)
      if m and int(m.group(1)) in valid:
        slot = (int(m.group(1)), m.group(2))
        if slot in convs:
          raise ValueError(f"{where}: two entries for VGG16 features.{slot[0]}.{slot[1]}: "
                           f"{convs[slot][0]!r} and {key!r}")
        convs[slot] = (key, value)
    m = _LIN.search(key)
    if m:
      k = int(m.group(1))
      if k in lins:
        raise ValueError(f"{where}: two entries for lin{k}: {lins[k][0]!r} and {key!r}")
      lins[k] = (key, value)
  return convs, lins


def lpips_vgg16_weights(state_dict: dict[str, Any], *, source: str = "state dict") -> LPIPSWeights:
  """LPIPSWeights from a {name: array} dict in the torchvision / lpips layouts (module docstring).

  Raises:
    ValueError: naming the key for a missing entry or a shape that does not fit the layout.
  """
  convs, lins = _lpips_entries(state_dict, source)
  missing = [f"features.{i}.{p}" for s in VGG16_SLICES for i in s for p in ("weight", "bias")
             if (i, p) not in convs] + [f"lin{k}.model.1.weight" for k in range(5) if k not in lins]
  if missing:
    raise ValueError(f"{source}: LPIPS-VGG16 weights are missing {len(missing)} entries, e.g. "
                     f"{missing[:4]} (found {len(state_dict)} keys such as {sorted(state_dict)[:4]})")
  out_convs, lin_out = [], []
  cin = 3
  for k, slice_ in enumerate(VGG16_SLICES):
    for i in slice_:
      wkey, w = convs[(i, "weight")]
      bkey, b = convs[(i, "bias")]
      w, b = np.asarray(w, np.float32), np.asarray(b, np.float32)
      if w.ndim != 4 or w.shape[1:] != (cin, 3, 3):
        raise ValueError(f"{source}: {wkey!r} must have shape [Cout, {cin}, 3, 3] (torch OIHW), got "
                         f"{list(w.shape)}")
      cout = w.shape[0]
      if b.shape != (cout,):
        raise ValueError(f"{source}: {bkey!r} must have shape [{cout}], got {list(b.shape)}")
      out_convs.append((jnp.asarray(w.transpose(2, 3, 1, 0)), jnp.asarray(b)))
      cin = cout
    lkey, lw = lins[k]
    lw = np.asarray(lw, np.float32)
    if lw.shape != (1, cin, 1, 1):
      raise ValueError(f"{source}: {lkey!r} must have shape [1, {cin}, 1, 1] (slice {k + 1} has {cin} "
                       f"channels), got {list(lw.shape)}")
    lin_out.append(jnp.asarray(lw.reshape(cin)))
  return LPIPSWeights(convs=tuple(out_convs), lins=tuple(lin_out), source=source)


def load_lpips_vgg16(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> LPIPSWeights:
  """Loads LPIPS-VGG16 weights from one file or several (merged; a key in two files is an error).

  `paths` may also be a comma-separated string of files.
  """
  if isinstance(paths, (str, os.PathLike)):
    paths = [p.strip() for p in os.fspath(paths).split(",") if p.strip()]
  paths = [os.fspath(p) for p in paths]
  if not paths:
    raise ValueError("LPIPS needs its trained weights: paths is empty (an untrained network is not "
                     "perceptual)")
  merged: dict[str, np.ndarray] = {}
  for p in paths:
    for k, v in load_state_dict(p).items():
      if k in merged:
        raise ValueError(f"key {k!r} appears in more than one weights file ({paths})")
      merged[k] = v
  return lpips_vgg16_weights(merged, source=",".join(paths))


def require_loaded(weights: Any, cls: type, network: str, loader: str) -> Any:
  """weights, if it is a `cls` (weights read from a file by `loader`); else ValueError: a perceptual
  network with untrained weights measures nothing perceptual."""
  if not isinstance(weights, cls):
    raise ValueError(f"{network} needs its trained weights, loaded from a file with {loader}(path) "
                     f"(an untrained network is not perceptual); got {type(weights).__name__}")
  return weights


def _require(weights: Any) -> LPIPSWeights:
  return require_loaded(weights, LPIPSWeights, "LPIPS", "load_lpips_vgg16")


def _conv3x3(x: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
  y = jax.lax.conv_general_dilated(x, w.astype(f32), (1, 1), ((1, 1), (1, 1)),
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return jax.nn.relu(y + b.astype(f32))


def _maxpool2(x: jax.Array) -> jax.Array:
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


def lpips_vgg16_features(weights: LPIPSWeights, images: jax.Array) -> list[jax.Array]:
  """The five LPIPS-VGG16 feature maps of images [B, H, W, 3] in [0, 1] (float32)."""
  weights = _require(weights)
  x = jnp.asarray(images, f32) * 2.0 - 1.0
  x = (x - jnp.asarray(LPIPS_SHIFT, f32)) / jnp.asarray(LPIPS_SCALE, f32)
  feats, j = [], 0
  for k, slice_ in enumerate(VGG16_SLICES):
    if k > 0:
      x = _maxpool2(x)
    for _ in slice_:
      x = _conv3x3(x, *weights.convs[j])
      j += 1
    feats.append(x)
  return feats


def lpips_vgg16(weights: LPIPSWeights, x: jax.Array, y: jax.Array) -> jax.Array:
  """LPIPS-VGG16 distance per image [B] float32 between images x, y [B, H, W, 3] in [0, 1]."""
  weights = _require(weights)
  return perceptual_distance(lambda im: lpips_vgg16_features(weights, im), x, y, weights.lins)


def lpips_loss(weights: LPIPSWeights, x: jax.Array, y: jax.Array) -> jax.Array:
  """Batch mean of `lpips_vgg16`: the training loss term (a float32 scalar)."""
  return jnp.mean(lpips_vgg16(weights, x, y))


NETWORKS = ("lpips_vgg16", "convnext_s", "lpips-convnext_s-A-B")


def from_config(loss_cfg: Any, config: Any = None) -> tuple[Callable, Any]:
  """(perceptual_fn(weights, x, x^) -> scalar, weights) for `config.loss` (the training step's form).

  `loss.perceptual_net` names the network: "lpips_vgg16" (default), or the release's ConvNeXt forms
  "convnext_s" and "lpips-convnext_s-A-B" (e.g. "lpips-convnext_s-1.0-0.1", the 1d-tokenizer
  recipes: (A * LPIPS + B * ConvNeXt) / (A + B), `losses.convnext_perceptual`). The LPIPS file(s)
  come from `loss.perceptual_weights` (or, for older configs, the top-level
  `config.perceptual_weights`), the ConvNeXt file from `loss.convnext_weights`.

  Raises:
    ValueError: when a needed weights file is not configured (the loss would compare untrained
      features) or the network name is unknown.
  """
  get = lambda c, k: (c.get(k, None) if hasattr(c, "get") else getattr(c, k, None)) if c is not None else None
  net = get(loss_cfg, "perceptual_net") or "lpips_vgg16"
  path = get(loss_cfg, "perceptual_weights") or get(config, "perceptual_weights")
  if net != "lpips_vgg16":
    from jaxtok.losses import convnext_perceptual  # pylint: disable=g-import-not-at-top
    return convnext_perceptual.from_paths(net, path, get(loss_cfg, "convnext_weights"))
  if not path:
    raise ValueError("config.loss.perceptual > 0 needs config.loss.perceptual_weights: the path of "
                     "the LPIPS-VGG16 weights (safetensors or a torch state dict; an untrained "
                     "network is not perceptual), got none")
  return lpips_loss, load_lpips_vgg16(path)
