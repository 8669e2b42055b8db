"""Convolutional encoder/decoder of the MaskGIT VQGAN (no attention layers), channels-last.

Structure (ch 128, mult (1, 1, 2, 2, 4), 2 residual blocks per level for the released f16 model):
  encoder: conv3x3 (no bias) -> per level [res blocks, 2x2 average pool except the last level]
           -> res blocks at the lowest resolution -> GroupNorm, SiLU -> conv1x1 to z channels.
  decoder: conv3x3 z -> ch*mult[-1] -> res blocks -> per level from the last to the first
           [res blocks, nearest 2x upsampling + conv3x3 except level 0] -> GroupNorm, SiLU -> conv3x3 to 3.
           (The upsampling + conv3x3 runs as four 2x2 convolutions at the low resolution:
           `Conv.after_upsample2`.)
Residual block: GN, SiLU, conv3x3, GN, SiLU, conv3x3 (convs without bias). When the channel count
changes, the 1x1 `nin_shortcut` is applied to the block's *output* (not its input) and the input is
dropped: this is MaskGIT's (and the open-muse / TiTok port's) behaviour, kept for checkpoint parity.
Convolutions use TF "SAME" padding. GroupNorm eps 1e-6, statistics in float32.

Dimension names: B batch, H/Wd spatial size, C channels, Z latent channels.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtok.sharding import logical_init

# PyTorch's default conv init: kaiming_uniform(a=sqrt(5)) = uniform(+-1/sqrt(fan_in)).
_TORCH_CONV_INIT = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


class GroupNorm(nnx.Module):
  """GroupNorm over [B, H, Wd, C] with `num_groups` groups, scale/bias [C] ('conv_out'), float32 math."""

  def __init__(self, channels: int, *, num_groups: int = 32, eps: float = 1e-6, dtype=jnp.float32,
               rngs: nnx.Rngs):
    if channels % num_groups:
      raise ValueError(f"channels ({channels}) must be divisible by num_groups ({num_groups})")
    self.num_groups, self.eps, self.dtype = num_groups, eps, dtype
    self.scale = nnx.Param(logical_init(nnx.initializers.ones, "conv_out")(
        rngs.params(), (channels,), jnp.float32))
    self.bias = nnx.Param(logical_init(nnx.initializers.zeros, "conv_out")(
        rngs.params(), (channels,), jnp.float32))

  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    g = x.astype(jnp.float32).reshape(b, h, w, self.num_groups, c // self.num_groups)
    mean = jnp.mean(g, axis=(1, 2, 4), keepdims=True)
    var = jnp.mean(jnp.square(g - mean), axis=(1, 2, 4), keepdims=True)
    y = ((g - mean) * jax.lax.rsqrt(var + self.eps)).reshape(b, h, w, c)
    return (y * self.scale.get_value() + self.bias.get_value()).astype(self.dtype)


class Conv(nnx.Module):
  """k x k stride-1 convolution with TF SAME padding; kernel [k, k, Cin, Cout] (-, -, conv_in, conv_out)."""

  def __init__(self, in_channels: int, out_channels: int, kernel: int, *, use_bias: bool = True,
               dtype=jnp.float32, kernel_init=None, rngs: nnx.Rngs):
    self.dtype, self.use_bias = dtype, use_bias
    kernel_init = kernel_init if kernel_init is not None else _TORCH_CONV_INIT
    self.kernel = nnx.Param(logical_init(kernel_init, None, None, "conv_in", "conv_out")(
        rngs.params(), (kernel, kernel, in_channels, out_channels), jnp.float32))
    self.bias = nnx.Param(logical_init(nnx.initializers.zeros, "conv_out")(
        rngs.params(), (out_channels,), jnp.float32)) if use_bias else None

  def __call__(self, x: jax.Array) -> jax.Array:
    y = jax.lax.conv_general_dilated(
        x.astype(self.dtype), self.kernel.get_value().astype(self.dtype), (1, 1), "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    if self.use_bias:
      y = y + self.bias.get_value().astype(self.dtype)
    return y

  def after_upsample2(self, x: jax.Array) -> jax.Array:
    """`self(nearest 2x upsampling of x)` for a 3x3 kernel, without making the upsampled image.

    Output pixel (2y+p, 2x+q) of the 3x3 SAME convolution over the upsampled image reads input rows
    {y-1: w0, y: w1+w2} when p = 0 and {y: w0+w1, y+1: w2} when p = 1 (zero padding outside), and
    likewise for columns. So each of the four phases (p, q) is a 2x2 convolution of x with summed
    taps; all four run as one 2x2 VALID convolution of x padded by 1 with 4 * Cout channels, and
    phase (p, q) is that output shifted by (p, q). 16 instead of 36 multiply-adds per input pixel
    and channel pair; equal to the direct form up to float rounding (tested)."""
    if self.kernel.shape[:2] != (3, 3):
      raise ValueError(f"after_upsample2 needs a 3x3 kernel, got {self.kernel.shape[:2]}")
    b, h, w, _ = x.shape
    k = self.kernel.get_value().astype(jnp.float32)  # [3, 3, Cin, Cout]
    fold = jnp.array([[[1, 0, 0], [0, 1, 1]], [[1, 1, 0], [0, 0, 1]]], jnp.float32)  # [p, 2 taps, 3]
    # taps[i, j, c, p, q, o]: phase (p, q)'s 2x2 kernel; summed in float32, then the compute dtype.
    taps = jnp.einsum("pia,qjb,abco->ijcpqo", fold, fold, k).reshape(2, 2, k.shape[2], -1)
    xp = jnp.pad(x.astype(self.dtype), ((0, 0), (1, 1), (1, 1), (0, 0)))
    y = jax.lax.conv_general_dilated(xp, taps.astype(self.dtype), (1, 1), "VALID",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    y = y.reshape(b, h + 1, w + 1, 2, 2, -1)
    rows = [jnp.stack([y[:, p:p + h, q:q + w, p, q] for q in (0, 1)], axis=3) for p in (0, 1)]
    y = jnp.stack(rows, axis=2).reshape(b, 2 * h, 2 * w, -1)  # [B, h, p, w, q, C] -> [B, 2h, 2w, C]
    if self.use_bias:
      y = y + self.bias.get_value().astype(self.dtype)
    return y


class ResnetBlock(nnx.Module):
  """MaskGIT residual block [B, H, Wd, Cin] -> [B, H, Wd, Cout] (see the module docstring for the quirk)."""

  def __init__(self, in_channels: int, out_channels: int, *, num_groups: int = 32,
               dtype=jnp.float32, rngs: nnx.Rngs):
    self.norm1 = GroupNorm(in_channels, num_groups=num_groups, dtype=dtype, rngs=rngs)
    self.conv1 = Conv(in_channels, out_channels, 3, use_bias=False, dtype=dtype, rngs=rngs)
    self.norm2 = GroupNorm(out_channels, num_groups=num_groups, dtype=dtype, rngs=rngs)
    self.conv2 = Conv(out_channels, out_channels, 3, use_bias=False, dtype=dtype, rngs=rngs)
    self.nin_shortcut = (Conv(out_channels, out_channels, 1, use_bias=False, dtype=dtype, rngs=rngs)
                         if in_channels != out_channels else None)

  def __call__(self, x: jax.Array) -> jax.Array:
    h = self.conv1(jax.nn.silu(self.norm1(x)))
    h = self.conv2(jax.nn.silu(self.norm2(h)))
    residual = self.nin_shortcut(h) if self.nin_shortcut is not None else x
    return h + residual.astype(h.dtype)


def _avg_pool2(x: jax.Array) -> jax.Array:
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def _res_blocks(in_channels, out_channels, n, *, num_groups, dtype, rngs) -> nnx.List:
  """n ResnetBlocks, the first mapping in_channels -> out_channels."""
  return nnx.List([ResnetBlock(in_channels if i == 0 else out_channels, out_channels,
                               num_groups=num_groups, dtype=dtype, rngs=rngs) for i in range(n)])


class DownLevel(nnx.Module):
  def __init__(self, in_channels, out_channels, num_res_blocks, downsample, *, num_groups, dtype,
               rngs):
    self.block = _res_blocks(in_channels, out_channels, num_res_blocks, num_groups=num_groups,
                             dtype=dtype, rngs=rngs)
    self.downsample = downsample

  def __call__(self, x):
    for blk in self.block:
      x = blk(x)
    return _avg_pool2(x) if self.downsample else x


class UpLevel(nnx.Module):
  def __init__(self, in_channels, out_channels, num_res_blocks, upsample, *, num_groups, dtype,
               rngs):
    self.block = _res_blocks(in_channels, out_channels, num_res_blocks, num_groups=num_groups,
                             dtype=dtype, rngs=rngs)
    self.upsample_conv = (Conv(out_channels, out_channels, 3, dtype=dtype, rngs=rngs)
                          if upsample else None)

  def __call__(self, x):
    for blk in self.block:
      x = blk(x)
    if self.upsample_conv is not None:
      x = self.upsample_conv.after_upsample2(x)
    return x


class Encoder(nnx.Module):
  """Images [B, H, Wd, C] -> latents [B, H/f, Wd/f, Z] with f = 2**(len(ch_mult) - 1)."""

  def __init__(self, *, ch: int = 128, ch_mult: Sequence[int] = (1, 1, 2, 2, 4),
               num_res_blocks: int = 2, z_channels: int = 256, in_channels: int = 3,
               num_groups: int = 32, dtype=jnp.float32, rngs: nnx.Rngs):
    ch_mult = tuple(ch_mult)
    self.conv_in = Conv(in_channels, ch, 3, use_bias=False, dtype=dtype, rngs=rngs)
    in_mult = (1,) + ch_mult
    self.down = nnx.List([
        DownLevel(ch * in_mult[i], ch * ch_mult[i], num_res_blocks, i != len(ch_mult) - 1,
                  num_groups=num_groups, dtype=dtype, rngs=rngs) for i in range(len(ch_mult))
    ])
    mid = ch * ch_mult[-1]
    self.mid = nnx.List([
        ResnetBlock(mid, mid, num_groups=num_groups, dtype=dtype, rngs=rngs)
        for _ in range(num_res_blocks)
    ])
    self.norm_out = GroupNorm(mid, num_groups=num_groups, dtype=dtype, rngs=rngs)
    self.conv_out = Conv(mid, z_channels, 1, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.conv_in(x)
    for level in self.down:
      x = level(x)
    for blk in self.mid:
      x = blk(x)
    return self.conv_out(jax.nn.silu(self.norm_out(x)))


class Decoder(nnx.Module):
  """Latents [B, h, w, Z] -> images [B, h*f, w*f, C]; `up` is stored in level order, run in reverse."""

  def __init__(self, *, ch: int = 128, ch_mult: Sequence[int] = (1, 1, 2, 2, 4),
               num_res_blocks: int = 2, z_channels: int = 256, out_channels: int = 3,
               num_groups: int = 32, dtype=jnp.float32, rngs: nnx.Rngs):
    ch_mult = tuple(ch_mult)
    n = len(ch_mult)
    top = ch * ch_mult[-1]
    self.conv_in = Conv(z_channels, top, 3, dtype=dtype, rngs=rngs)
    self.mid = nnx.List([
        ResnetBlock(top, top, num_groups=num_groups, dtype=dtype, rngs=rngs)
        for _ in range(num_res_blocks)
    ])
    self.up = nnx.List([
        UpLevel(ch * ch_mult[i + 1] if i < n - 1 else top, ch * ch_mult[i], num_res_blocks, i != 0,
                num_groups=num_groups, dtype=dtype, rngs=rngs) for i in range(n)
    ])
    self.norm_out = GroupNorm(ch * ch_mult[0], num_groups=num_groups, dtype=dtype, rngs=rngs)
    self.conv_out = Conv(ch * ch_mult[0], out_channels, 3, dtype=dtype, rngs=rngs)

  def __call__(self, z: jax.Array) -> jax.Array:
    x = self.conv_in(z)
    for blk in self.mid:
      x = blk(x)
    for level in list(self.up)[::-1]:
      x = level(x)
    return self.conv_out(jax.nn.silu(self.norm_out(x)))
