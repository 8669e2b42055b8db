"""ViT pieces: the size table, the open_clip block stack, patch embedding as reshape + dense, and
patchify/unpatchify.

`vit_stack` is open_clip's `ResidualAttentionBlock` stack (as used by TiTok) composed from the shared
parts: pre-LN blocks x + attn(ln_1(x)), x + mlp(ln_2(x)), LayerNorm eps 1e-5, fused qkv with biases,
MLP 4x with exact (erf) GELU.

A p x p stride-p convolution equals cutting the image into patches (row-major over the grid, each
patch flattened in (p_y, p_x, c) order) followed by a dense layer [p*p*C, W]; PyTorch's conv weight
[W, C, p, p] maps onto the kernel by `w.transpose(2, 3, 1, 0).reshape(p*p*C, W)`.

Dimension names: B batch, H/Wd image height/width, C channels, p patch size, G grid cells
(H/p * Wd/p), W width.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtok.nn.block import Block
from jaxtok.nn.embeddings import trunc_normal
from jaxtok.nn.stack import Stack
from jaxtok.sharding import logical_init

# name -> (width, depth, heads); the MLP is 4x width. Long names are accepted as aliases.
VIT_SIZES = {
    "S": (512, 8, 8),
    "B": (768, 12, 12),
    "L": (1024, 24, 16),
}
_ALIASES = {"small": "S", "base": "B", "large": "L"}


def vit_size(name: str) -> tuple[int, int, int]:
  """(width, depth, heads) of a ViT size name: S, B, L (or small, base, large)."""
  key = _ALIASES.get(str(name).lower(), str(name).upper())
  if key not in VIT_SIZES:
    raise ValueError(f"ViT size must be one of {sorted(VIT_SIZES)} (or small/base/large), got {name!r}")
  return VIT_SIZES[key]


def vit_stack(width: int, depth: int, num_heads: int, *, mlp_ratio: float = 4.0, dtype=jnp.float32,
              remat="none", scan_layers: bool = False, attention_impl=None, rngs: nnx.Rngs) -> Stack:
  """`depth` open_clip pre-LN blocks [B, T, W] -> [B, T, W] (see the module docstring)."""
  return Stack(depth, lambda r: Block(width, num_heads, mlp_hidden=int(width * mlp_ratio),
                                      implementation=attention_impl, dtype=dtype, rngs=r),
               scan_layers=scan_layers, remat=remat, rngs=rngs)


def patchify(images: jax.Array, patch: int) -> jax.Array:
  """[B, H, Wd, C] -> [B, G, p*p*C], grid row-major, each patch in (p_y, p_x, c) order."""
  b, h, w, c = images.shape
  if h % patch or w % patch:
    raise ValueError(f"image size ({h}, {w}) must be divisible by the patch size {patch}")
  x = images.reshape(b, h // patch, patch, w // patch, patch, c)
  x = x.transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // patch) * (w // patch), patch * patch * c)


def unpatchify(x: jax.Array, patch: int, grid_h: int, grid_w: int) -> jax.Array:
  """Inverse of `patchify` (depth-to-space): [B, G, p*p*C] -> [B, grid_h*p, grid_w*p, C]."""
  b, g, d = x.shape
  c = d // (patch * patch)
  if g != grid_h * grid_w or c * patch * patch != d:
    raise ValueError(f"cannot unpatchify shape {x.shape} with patch {patch} and grid "
                     f"({grid_h}, {grid_w})")
  x = x.reshape(b, grid_h, grid_w, patch, patch, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, grid_h * patch, grid_w * patch, c)


class PatchEmbed(nnx.Module):
  """Conv p x p stride p as patchify + dense: [B, H, Wd, C] -> [B, G, W]; kernel [p*p*C, W] ('patch', 'embed')."""

  def __init__(self, patch: int, width: int, in_channels: int = 3, *, dtype=jnp.float32,
               rngs: nnx.Rngs):
    self.patch, self.dtype = patch, dtype
    self.kernel = nnx.Param(logical_init(trunc_normal(0.02), "patch", "embed")(
        rngs.params(), (patch * patch * in_channels, width), jnp.float32))
    self.bias = nnx.Param(logical_init(nnx.initializers.zeros, "embed")(
        rngs.params(), (width,), jnp.float32))

  def __call__(self, images: jax.Array) -> jax.Array:
    x = patchify(images.astype(self.dtype), self.patch)
    return jnp.dot(x, self.kernel.get_value().astype(self.dtype)) + self.bias.get_value().astype(
        self.dtype)
