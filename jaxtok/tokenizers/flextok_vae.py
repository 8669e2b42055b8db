"""The small 2D convolutional VAE whose latents FlexTok patchifies (SD-style `AutoencoderKL` layout).

The release uses a frozen, pretrained diffusers `AutoencoderKL` (SDXL-like: block channels
(128, 256, 512, 512), 2 ResNet blocks per level, GroupNorm(32, eps 1e-6) + SiLU, a mid block with one
single-head self-attention, f8, latent channels 4/8/16, latents multiplied by a `scaling_factor`;
`EPFL-VILAB/flextok_vae_c{4,8,16}`). This module has the same layout with every size a field, so tiny
configs can train one from scratch on CPU; it works on images in [-1, 1] (FlexTok converts).

Layout (diffusers names in brackets): encoder conv_in -> per level `layers_per_block` ResNet blocks and
a stride-2 downsample (pad right/bottom by 1, 3x3 conv, no padding) except at the last level -> mid
(ResNet, attention, ResNet) -> GroupNorm, SiLU, conv_out to 2C -> 1x1 quant_conv -> (mean, logvar).
Decoder: 1x1 post_quant_conv -> conv_in -> mid -> per level (reversed) `layers_per_block + 1` ResNet
blocks and a nearest x2 upsample + 3x3 conv except at the last -> GroupNorm, SiLU, conv_out to 3.
Initialisation follows PyTorch's defaults (uniform +-1/sqrt(fan_in) weights); biases start at zero.

Dimension names: B batch, H, W image size, h, w latent size (H / f, W / f), C latent channels,
F feature channels.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtok.nn.attention import Attention
from jaxtok.quantizers.base import check_float_array
from jaxtok.sharding import logical_init
from jaxtok.tokenizers import vae

_TORCH_INIT = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
_ZEROS = nnx.initializers.zeros_init()
_GN_EPS = 1e-6


def _conv(cin, cout, k, *, dtype, rngs, stride=1, padding="SAME"):
  return nnx.Conv(cin, cout, kernel_size=(k, k), strides=(stride, stride), padding=padding,
                  dtype=dtype, kernel_init=logical_init(_TORCH_INIT, None, None, "conv_in", "conv_out"),
                  bias_init=logical_init(_ZEROS, "conv_out"), rngs=rngs)


def _norm(c, groups, *, dtype, rngs):
  if c % groups:
    raise ValueError(f"channels {c} must be divisible by norm_groups {groups}")
  return nnx.GroupNorm(c, num_groups=groups, epsilon=_GN_EPS, dtype=dtype, param_dtype=jnp.float32,
                       rngs=rngs)


class ResnetBlock(nnx.Module):
  """norm, silu, conv3x3, norm, silu, conv3x3, plus a 1x1 shortcut when the channels change."""

  def __init__(self, cin: int, cout: int, groups: int, *, dtype, rngs: nnx.Rngs):
    self.norm1 = _norm(cin, groups, dtype=dtype, rngs=rngs)
    self.conv1 = _conv(cin, cout, 3, dtype=dtype, rngs=rngs)
    self.norm2 = _norm(cout, groups, dtype=dtype, rngs=rngs)
    self.conv2 = _conv(cout, cout, 3, dtype=dtype, rngs=rngs)
    self.shortcut = _conv(cin, cout, 1, dtype=dtype, rngs=rngs) if cin != cout else None

  def __call__(self, x):
    h = self.conv1(jax.nn.silu(self.norm1(x)))
    h = self.conv2(jax.nn.silu(self.norm2(h)))
    return (self.shortcut(x) if self.shortcut is not None else x) + h


class SpatialAttention(nnx.Module):
  """Single-head self-attention (`nn.Attention`, biases, scale 1/sqrt(F)) over all h*w positions,
  a GroupNorm in front, residual."""

  def __init__(self, c: int, groups: int, *, dtype, implementation=None, rngs: nnx.Rngs):
    self.norm = _norm(c, groups, dtype=dtype, rngs=rngs)
    # PyTorch Linear's default init, uniform +-1/sqrt(fan_in), on the fused q/k/v and out kernels.
    torch_init = lambda key, shape, dt=jnp.float32: jax.random.uniform(key, shape, dt, -c**-0.5,
                                                                        c**-0.5)
    self.attn = Attention(c, 1, implementation=implementation, dtype=dtype, qkv_init=torch_init,
                          out_init=torch_init, rngs=rngs)

  def __call__(self, x):
    b, h, w, c = x.shape
    y = self.attn(self.norm(x).reshape(b, h * w, c))
    return x + y.reshape(b, h, w, c).astype(x.dtype)


class MidBlock(nnx.Module):
  """ResNet, (attention), ResNet at the lowest resolution."""

  def __init__(self, c: int, groups: int, attention: bool, *, dtype, implementation=None,
               rngs: nnx.Rngs):
    self.res1 = ResnetBlock(c, c, groups, dtype=dtype, rngs=rngs)
    self.attn = SpatialAttention(c, groups, dtype=dtype, implementation=implementation,
                                 rngs=rngs) if attention else None
    self.res2 = ResnetBlock(c, c, groups, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    x = self.res1(x)
    if self.attn is not None:
      x = self.attn(x)
    return self.res2(x)


class FlexTokVAE(nnx.Module):
  """SD-style KL autoencoder (see the module docstring).

  Args:
    channels: feature channels per level; the downsampling factor is 2 ** (len(channels) - 1).
    latent_channels: C.
    layers_per_block: ResNet blocks per encoder level (the decoder has one more).
    norm_groups: GroupNorm groups (must divide every entry of `channels`).
    mid_attention: whether the mid blocks hold the self-attention layer.
    attention_impl: that attention's kernel (None, "xla", "cudnn"; see `nn.attention.attend`).
    dtype: compute dtype (parameters float32).
  """

  def __init__(self, *, channels: Sequence[int] = (128, 256, 512, 512), latent_channels: int = 16,
               layers_per_block: int = 2, norm_groups: int = 32, mid_attention: bool = True,
               attention_impl=None, dtype=jnp.float32, rngs: nnx.Rngs):
    channels = tuple(int(c) for c in channels)
    if not channels or min(channels) < 1:
      raise ValueError(f"channels must be a non-empty sequence of positive ints, got {channels}")
    if latent_channels < 1 or layers_per_block < 1:
      raise ValueError(f"latent_channels and layers_per_block must be >= 1, got {latent_channels}, "
                       f"{layers_per_block}")
    self.channels, self.latent_channels = channels, latent_channels
    self.downsample_factor = 2 ** (len(channels) - 1)
    kw = dict(dtype=dtype, rngs=rngs)
    # Encoder.
    self.enc_in = _conv(3, channels[0], 3, **kw)
    down, prev = [], channels[0]
    for i, c in enumerate(channels):
      for _ in range(layers_per_block):
        down.append(ResnetBlock(prev, c, norm_groups, **kw))
        prev = c
      if i < len(channels) - 1:
        down.append(_conv(c, c, 3, stride=2, padding=((0, 1), (0, 1)), **kw))
    self.down = nnx.List(down)
    self.enc_mid = MidBlock(channels[-1], norm_groups, mid_attention, implementation=attention_impl,
                            **kw)
    self.enc_norm = _norm(channels[-1], norm_groups, **kw)
    self.enc_out = _conv(channels[-1], 2 * latent_channels, 3, **kw)
    self.quant_conv = _conv(2 * latent_channels, 2 * latent_channels, 1, **kw)
    # Decoder.
    self.post_quant_conv = _conv(latent_channels, latent_channels, 1, **kw)
    self.dec_in = _conv(latent_channels, channels[-1], 3, **kw)
    self.dec_mid = MidBlock(channels[-1], norm_groups, mid_attention, implementation=attention_impl,
                            **kw)
    up, prev = [], channels[-1]
    rev = channels[::-1]
    for i, c in enumerate(rev):
      for _ in range(layers_per_block + 1):
        up.append(ResnetBlock(prev, c, norm_groups, **kw))
        prev = c
      if i < len(rev) - 1:
        up.append(_conv(c, c, 3, **kw))  # preceded by a nearest x2 upsample
    self.up = nnx.List(up)
    self._up_convs = tuple(isinstance(m, nnx.Conv) for m in up)
    self.dec_norm = _norm(channels[0], norm_groups, **kw)
    self.dec_out = _conv(channels[0], 3, 3, **kw)

  def encode(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    """images float [B, H, W, 3] in [-1, 1] -> (mean, logvar clamped to [-30, 20]), float32
    [B, H/f, W/f, C] each (the Gaussian posterior of `tokenizers.vae`).

    Raises:
      ValueError/TypeError: if images is not float [B, H, W, 3] with H, W divisible by f.
    """
    check_float_array("images", images, min_rank=4, last_dim=3)
    f = self.downsample_factor
    if images.ndim != 4 or images.shape[1] % f or images.shape[2] % f:
      raise ValueError(f"images must be [B, H, W, 3] with H and W divisible by the VAE factor {f}, "
                       f"got shape {tuple(images.shape)}")
    x = self.enc_in(images)
    for layer in self.down:
      x = layer(x)
    x = self.enc_out(jax.nn.silu(self.enc_norm(self.enc_mid(x))))
    return vae.split_moments(self.quant_conv(x))

  def decode(self, latents: jax.Array) -> jax.Array:
    """latents float [B, h, w, C] -> images float32 [B, h*f, w*f, 3] (about [-1, 1], not clipped)."""
    check_float_array("latents", latents, min_rank=4, last_dim=self.latent_channels)
    x = self.dec_in(self.post_quant_conv(latents))
    x = self.dec_mid(x)
    for layer, is_up in zip(self.up, self._up_convs):
      if is_up:
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)  # nearest x2
      x = layer(x)
    return self.dec_out(jax.nn.silu(self.dec_norm(x))).astype(jnp.float32)
