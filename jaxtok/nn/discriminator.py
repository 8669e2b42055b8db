"""PatchGAN discriminator (the taming-transformers / MaskGIT `NLayerDiscriminator` layout).

  images [B, H, W, 3] in [0, 1] -> 2x - 1
  conv4x4 stride 2 (3 -> ch), LeakyReLU 0.2
  n = 1 .. num_layers - 1:  conv4x4 stride 2 (ch * m_{n-1} -> ch * m_n), norm, LeakyReLU 0.2
  conv4x4 stride 1 (ch * m_{L-1} -> ch * m_L), norm, LeakyReLU 0.2
  conv4x4 stride 1 (-> 1): logits [B, h, w] (one real/fake logit per overlapping patch)

with m_n = channel_multipliers[n] (default min(2^n, 8), the original's rule) and every 4x4 conv
padded by 1 on each side (PyTorch `padding=1`), so H = 256 gives 128, 64, 32, 31, 30. Convolutions
followed by a norm have no bias (as in the original, where the norm's shift replaces it).
Initialisation: conv kernels N(0, 0.02) (taming's `weights_init`); norm scales 1, shifts 0.

Norm: the original uses BatchNorm. Here the choice is "group" (`jaxtok.nn.conv.GroupNorm`, eps 1e-5,
`num_groups` groups or fewer when the width is smaller), "instance" (one group per channel) or
"none". Batch statistics would be mutable state threaded through the pure train step, differ between
the real and the fake pass (the hinge loss runs D on each separately), and need a cross-device
reduction under data parallelism to match the single-device step; per-example normalisation has none
of these problems and is what StyleGAN-style and MaskBit discriminators use.

Parameters carry logical axes: kernels (-, -, conv_in, conv_out), norm scale/bias and conv bias
(conv_out), as the VQGAN convs of `jaxtok.nn.conv`.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtok.nn.conv import GroupNorm
from jaxtok.sharding import logical_init

NORMS = ("group", "instance", "none")


def _normal(mean: float, std: float):
  def init(key, shape, dtype=jnp.float32):
    return mean + std * jax.random.normal(key, shape, dtype)
  return init


class Conv4x4(nnx.Module):
  """4x4 convolution, padding 1 on each side, stride 1 or 2; kernel [4, 4, Cin, Cout]."""

  def __init__(self, cin: int, cout: int, *, stride: int, use_bias: bool, dtype: Any,
               rngs: nnx.Rngs):
    self.stride, self.dtype = stride, dtype
    self.kernel = nnx.Param(logical_init(_normal(0.0, 0.02), None, None, "conv_in", "conv_out")(
        rngs.params(), (4, 4, cin, cout), jnp.float32))
    self.bias = nnx.Param(logical_init(nnx.initializers.zeros, "conv_out")(
        rngs.params(), (cout,), jnp.float32)) if use_bias else None

  def __call__(self, x: jax.Array) -> jax.Array:
    y = jax.lax.conv_general_dilated(
        x.astype(self.dtype), self.kernel.get_value().astype(self.dtype), (self.stride,) * 2,
        ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
    if self.bias is not None:
      y = y + self.bias.get_value().astype(self.dtype)
    return y


def default_multipliers(num_layers: int) -> tuple[int, ...]:
  """(m_0, ..., m_L) = min(2^n, 8): the original's channel multipliers."""
  return tuple(min(2**n, 8) for n in range(num_layers + 1))


class PatchDiscriminator(nnx.Module):
  """NLayerDiscriminator: images [B, H, W, 3] in [0, 1] -> patch logits [B, h, w] float32."""

  def __init__(self, *, channels: int = 64, num_layers: int = 3,
               channel_multipliers: Sequence[int] | None = None, norm: str = "group",
               num_groups: int = 32, dtype: Any = jnp.float32, rngs: nnx.Rngs):
    for name, v in (("channels", channels), ("num_layers", num_layers), ("num_groups", num_groups)):
      if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    if norm not in NORMS:
      raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    mult = tuple(default_multipliers(num_layers) if channel_multipliers is None
                 else channel_multipliers)
    if len(mult) != num_layers + 1 or any(not isinstance(m, int) or m < 1 for m in mult):
      raise ValueError(f"channel_multipliers must be {num_layers + 1} positive ints (num_layers + 1), "
                       f"got {channel_multipliers!r}")
    self.dtype = jnp.dtype(dtype)
    widths = [channels * m for m in mult]
    self.stem = Conv4x4(3, widths[0], stride=2, use_bias=True, dtype=self.dtype, rngs=rngs)
    convs, norms = [], []
    for n in range(1, num_layers + 1):
      stride = 2 if n < num_layers else 1
      convs.append(Conv4x4(widths[n - 1], widths[n], stride=stride, use_bias=norm == "none",
                           dtype=self.dtype, rngs=rngs))
      if norm == "none":
        norms.append(None)
      else:
        groups = widths[n] if norm == "instance" else _groups(widths[n], num_groups)
        norms.append(GroupNorm(widths[n], num_groups=groups, eps=1e-5, dtype=self.dtype, rngs=rngs))
    self.convs = nnx.List(convs)
    self.norms = nnx.List(norms)
    self.head = Conv4x4(widths[-1], 1, stride=1, use_bias=True, dtype=self.dtype, rngs=rngs)

  def __call__(self, images: jax.Array) -> jax.Array:
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"images must be [B, H, W, 3], got shape {images.shape}")
    x = images.astype(jnp.float32) * 2.0 - 1.0
    x = jax.nn.leaky_relu(self.stem(x), 0.2)
    for conv, norm in zip(self.convs, self.norms):
      x = conv(x)
      if norm is not None:
        x = norm(x)
      x = jax.nn.leaky_relu(x, 0.2)
    return self.head(x)[..., 0].astype(jnp.float32)


def _groups(width: int, num_groups: int) -> int:
  """The largest divisor of width that is <= num_groups."""
  g = min(num_groups, width)
  while width % g:
    g -= 1
  return g


def make_discriminator(cfg: Mapping[str, Any], *, rngs: nnx.Rngs) -> PatchDiscriminator:
  """PatchDiscriminator from `config.disc` fields: channels, num_layers, channel_multipliers, norm,
  num_groups, dtype (missing ones take the defaults; unknown keys are an error)."""
  cfg = dict(cfg)
  cfg.pop("name", None)
  allowed = {"channels", "num_layers", "channel_multipliers", "norm", "num_groups", "dtype"}
  unknown = sorted(set(cfg) - allowed)
  if unknown:
    raise ValueError(f"config.disc has unknown fields {unknown}; expected some of {sorted(allowed)}")
  if cfg.get("channel_multipliers") is not None:
    cfg["channel_multipliers"] = tuple(int(m) for m in cfg["channel_multipliers"])
  return PatchDiscriminator(**cfg, rngs=rngs)
