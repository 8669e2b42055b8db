"""DINOv2 (Oquab et al. 2023; with registers, Darcet et al. 2024) as a frozen feature network.

facebookresearch/dinov2 `dinov2/models/vision_transformer.py` (`DinoVisionTransformer`, hub
`dinov2/hub/backbones.py`) composed from the shared parts:

  images [B, H, W, 3] in [0, 1] (jaxtok's range) -> (x - ImageNet mean) / ImageNet std
  -> 14 x 14 patches (PatchEmbed: patchify + dense) -> [cls, patches] + learned positions
     (interpolated to the input grid, see below) -> [cls, registers, patches]
  -> L pre-norm Blocks (LayerNorm eps 1e-6, fused qkv with bias, exact-GELU MLP 4x or SwiGLU for
     ViT-g, LayerScale on both branches) -> final LayerNorm (eps 1e-6)
  -> x_norm_clstoken [B, W], x_norm_regtokens [B, R, W], x_norm_patchtokens [B, N, W] (row-major
     grid), x_prenorm [B, 1 + R + N, W]: the keys of the official `forward_features`.

Position interpolation (`interpolate_pos_encoding`, checked at commit b8931f7 of the official repo):
  - The table holds 1 + M*M rows (M = 37 for the released img_size 518). When the input grid is
    (M, M) the table is used as is; otherwise the M x M patch rows are resampled with torch's
    `F.interpolate(mode="bicubic")` (align_corners False, cubic coefficient A = -0.75, edge indices
    clamped) computed in float32, and the cls row is kept.
  - The "+0.1 offset" quirk: with `interpolate_offset` > 0 (0.1 in the models without registers) it
    passes scale_factor ((h0 + 0.1) / M, (w0 + 0.1) / M) instead of a size. The output size is
    floor(M * sf) = h0, but torch then maps output pixel i to the source coordinate
    (i + 0.5) * M / (h0 + 0.1) - 0.5, not (i + 0.5) * M / h0 - 0.5: slightly different weights
    from a plain resize to h0. `bicubic_weights(..., scale_factor=...)` reproduces that.
  - The models with registers (hub `dinov2_vit*14_reg`) use interpolate_offset 0 (a plain size)
    and interpolate_antialias True: torch's separable antialiased bicubic (PIL's filter, A = -0.5,
    support widened by the down-scale factor, taps outside the image dropped and the weights
    renormalised), which differs from the plain bicubic even when upsampling.
  - The official names the image dims (w, h) = (H, W): rows come first everywhere, so non-square
    grids resample rows by the H factor and columns by the W factor.
`interpolate_antialias` / `interpolate_offset` are plain fields, defaulting to the hub's values for
the chosen register count.

Presets (`SIZES`): S/B/L/g-14 (width, depth, heads); ViT-g uses the fused SwiGLU FFN with hidden
(int(4W * 2/3) + 7) // 8 * 8 = 4096. The released models were trained at 518 px (37 x 37 grid) and
load with init LayerScale 1.0 (the values come from the file).

Dimension names: B batch, H/W image size, p patch (14), M position-table side, N patches, R registers,
W width.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxtok.nn.block import Block
from jaxtok.nn.embeddings import trunc_normal
from jaxtok.nn.norm import Norm
from jaxtok.nn import options
from jaxtok.nn.stack import Stack
from jaxtok.nn.vit import PatchEmbed
from jaxtok.sharding import logical_init

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_LN_EPS = 1e-6

# name -> (width, depth, heads, ffn); head_dim 64 in all of them.
SIZES: dict[str, tuple[int, int, int, str]] = {
    "S": (384, 12, 6, "mlp"),
    "B": (768, 12, 12, "mlp"),
    "L": (1024, 24, 16, "mlp"),
    "g": (1536, 40, 24, "swiglu"),
}


def swiglu_hidden(width: int, mlp_ratio: float = 4.0) -> int:
  """SwiGLUFFNFused's hidden width: (int(W * mlp_ratio * 2 / 3) + 7) // 8 * 8 (4096 for ViT-g)."""
  return (int(int(width * mlp_ratio) * 2 / 3) + 7) // 8 * 8


# ----------------------------------------------------------------------------- torch's bicubic


def _cubic(x: np.ndarray, a: float) -> np.ndarray:
  """Keys' cubic convolution kernel with coefficient a, at |x| (0 beyond 2)."""
  x = np.abs(x)
  near = ((a + 2) * x - (a + 3)) * x * x + 1
  far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
  return np.where(x < 1, near, np.where(x < 2, far, 0.0))


def bicubic_weights(in_size: int, out_size: int, *, antialias: bool = False,
                    scale_factor: float | None = None) -> np.ndarray:
  """[out_size, in_size] float64 matrix of torch's 1D `F.interpolate(mode="bicubic",
  align_corners=False)` (apply it along each axis).

  The coordinate scale is 1 / scale_factor when one is given (torch uses the requested factor, not
  out/in), else in/out.
  antialias False: source x = (i + 0.5) * scale - 0.5, taps floor(x) - 1 .. floor(x) + 2 with
    Keys' A = -0.75, indices clamped to [0, in_size - 1] (so edge taps pile up on the edge pixel).
  antialias True (`_upsample_bicubic2d_aa`): centre c = (i + 0.5) * scale, support 2 * max(scale, 1),
    taps j in [max(int(c - support + 0.5), 0), min(int(c + support + 0.5), in_size)) with weight
    cubic((j - c + 0.5) / max(scale, 1)) for PIL's A = -0.5, normalised to sum 1.
  """
  for name, v in (("in_size", in_size), ("out_size", out_size)):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
      raise ValueError(f"{name} must be an int >= 1, got {v!r}")
  scale = 1.0 / scale_factor if scale_factor else in_size / out_size
  w = np.zeros((out_size, in_size), np.float64)
  rows = np.arange(out_size)
  if not antialias:
    src = (rows + 0.5) * scale - 0.5
    base = np.floor(src)
    t = src - base
    for k in range(4):  # taps at base - 1 + k, distance |t - (k - 1)|
      idx = np.clip(base.astype(np.int64) - 1 + k, 0, in_size - 1)
      np.add.at(w, (rows, idx), _cubic(t - (k - 1), -0.75))
    return w
  support = 2.0 * scale if scale >= 1.0 else 2.0
  invscale = 1.0 / scale if scale >= 1.0 else 1.0
  for i in rows:
    centre = scale * (i + 0.5)
    lo = max(int(centre - support + 0.5), 0)
    hi = min(int(centre + support + 0.5), in_size)
    j = np.arange(lo, hi)
    taps = _cubic((j - centre + 0.5) * invscale, -0.5)
    total = taps.sum()
    w[i, lo:hi] = taps / total if total != 0 else taps
  return w


def resize_bicubic(images: jax.Array, size: tuple[int, int], *, antialias: bool = False) -> jax.Array:
  """images [B, H, W, C] -> float32 [B, h, w, C] as torch's F.interpolate(x, size, mode="bicubic")
  (REPA / GigaTok resize images to 224 this way before DINOv2). Identity when the size is unchanged."""
  b, h_in, w_in, c = images.shape
  h, w = size
  x = images.astype(jnp.float32)
  if (h, w) == (h_in, w_in):
    return x
  wy = jnp.asarray(bicubic_weights(h_in, h, antialias=antialias), jnp.float32)
  wx = jnp.asarray(bicubic_weights(w_in, w, antialias=antialias), jnp.float32)
  hp = jax.lax.Precision.HIGHEST
  x = jnp.einsum("ij,bjkc->bikc", wy, x, precision=hp)
  return jnp.einsum("lk,bikc->bilc", wx, x, precision=hp)


# ----------------------------------------------------------------------------- the model


class DINOv2(nnx.Module):
  """DINOv2 ViT (see the module docstring): images [B, H, W, 3] in [0, 1], H and W multiples of p.

  Args:
    width, depth, num_heads: W, L, heads (the SIZES presets).
    patch_size: p (14).
    image_size: the training resolution; the position table has (image_size / p)^2 + 1 rows.
    num_registers: R, 0 or 4 in the releases.
    mlp_ratio: MLP hidden = W * mlp_ratio ("mlp"), or SwiGLUFFNFused's rounding of it ("swiglu").
    ffn: "mlp" (exact GELU) or "swiglu" (ViT-g).
    layerscale: LayerScale init value (None: no LayerScale; the releases have it).
    interpolate_antialias, interpolate_offset: the position interpolation (None: the hub's values,
      True / 0.0 with registers, False / 0.1 without).
    dtype, remat, scan_layers, attention_impl: `nn.options`.
  """

  def __init__(self, *, width: int = 768, depth: int = 12, num_heads: int = 12, patch_size: int = 14,
               image_size: int = 518, num_registers: int = 0, mlp_ratio: float = 4.0,
               ffn: str = "mlp", layerscale: float | None = 1.0,
               interpolate_antialias: bool | None = None, interpolate_offset: float | None = None,
               dtype: Any = jnp.float32, remat: Any = "none", scan_layers: bool = False,
               attention_impl: Any = None, rngs: nnx.Rngs):
    for name, v in (("width", width), ("depth", depth), ("num_heads", num_heads),
                    ("patch_size", patch_size), ("image_size", image_size)):
      if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"DINOv2 {name} must be an int >= 1, got {v!r}")
    if isinstance(num_registers, bool) or not isinstance(num_registers, int) or num_registers < 0:
      raise ValueError(f"DINOv2 num_registers must be an int >= 0, got {num_registers!r}")
    if image_size % patch_size:
      raise ValueError(f"DINOv2 image_size must be a multiple of patch_size {patch_size}, got "
                       f"{image_size}")
    if ffn not in ("mlp", "swiglu"):
      raise ValueError(f"DINOv2 ffn must be 'mlp' or 'swiglu', got {ffn!r}")
    self.width, self.patch_size, self.num_registers = width, patch_size, num_registers
    self.grid = image_size // patch_size
    self.antialias = bool(num_registers > 0 if interpolate_antialias is None else interpolate_antialias)
    self.offset = float((0.0 if num_registers else 0.1) if interpolate_offset is None
                        else interpolate_offset)
    self.dtype = dtype
    hidden = swiglu_hidden(width, mlp_ratio) if ffn == "swiglu" else int(width * mlp_ratio)
    param = lambda init, shape, *names: nnx.Param(logical_init(init, *names)(
        rngs.params(), shape, jnp.float32))
    self.patch_embed = PatchEmbed(patch_size, width, dtype=dtype, rngs=rngs)
    self.cls_token = param(nnx.initializers.normal(1e-6), (width,), "embed")
    self.pos_embed = param(trunc_normal(0.02), (1 + self.grid * self.grid, width), None, "embed")
    self.register_tokens = param(nnx.initializers.normal(1e-6), (num_registers, width), None,
                                 "embed") if num_registers else None
    block = lambda r: Block(width, num_heads, mlp_hidden=hidden, mlp="gelu" if ffn == "mlp" else "swiglu",
                            norm_eps=_LN_EPS, layerscale=layerscale, implementation=attention_impl,
                            qkv_init=trunc_normal(0.02), mlp_init=trunc_normal(0.02), dtype=dtype,
                            rngs=r)
    self.blocks = Stack(depth, block, scan_layers=scan_layers, remat=remat, rngs=rngs)
    self.norm = Norm(width, eps=_LN_EPS, dtype=dtype, rngs=rngs)

  def positions(self, grid_h: int, grid_w: int) -> jax.Array:
    """The position table for a grid_h x grid_w input: float32 [1 + grid_h * grid_w, W]."""
    table = self.pos_embed.get_value()
    if (grid_h, grid_w) == (self.grid, self.grid):
      return table
    m = self.grid
    sf = (lambda g: (g + self.offset) / m) if self.offset else (lambda g: None)
    wy = bicubic_weights(m, grid_h, antialias=self.antialias, scale_factor=sf(grid_h))
    wx = bicubic_weights(m, grid_w, antialias=self.antialias, scale_factor=sf(grid_w))
    patch = table[1:].reshape(m, m, -1)
    hp = jax.lax.Precision.HIGHEST
    patch = jnp.einsum("ij,jkc->ikc", jnp.asarray(wy, jnp.float32), patch, precision=hp)
    patch = jnp.einsum("lk,ikc->ilc", jnp.asarray(wx, jnp.float32), patch, precision=hp)
    return jnp.concatenate([table[:1], patch.reshape(grid_h * grid_w, -1)], axis=0)

  def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
    """images float [B, H, W, 3] in [0, 1] -> the official `forward_features` dict (float32):
    x_norm_clstoken [B, W], x_norm_regtokens [B, R, W], x_norm_patchtokens [B, N, W] (row-major
    (H/p) x (W/p) grid), x_prenorm [B, 1 + R + N, W]."""
    if not hasattr(images, "ndim") or images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"images must be [B, H, W, 3], got shape {getattr(images, 'shape', None)}")
    b, h, w, _ = images.shape
    p = self.patch_size
    if h % p or w % p:
      raise ValueError(f"images' height and width must be multiples of the patch size {p}, got "
                       f"{h} x {w}")
    mean = jnp.asarray(IMAGENET_MEAN, jnp.float32)
    std = jnp.asarray(IMAGENET_STD, jnp.float32)
    x = self.patch_embed((images.astype(jnp.float32) - mean) / std)
    cls = jnp.broadcast_to(self.cls_token.get_value().astype(x.dtype), (b, 1, self.width))
    x = jnp.concatenate([cls, x], axis=1) + self.positions(h // p, w // p).astype(x.dtype)
    if self.register_tokens is not None:
      regs = jnp.broadcast_to(self.register_tokens.get_value().astype(x.dtype),
                              (b, self.num_registers, self.width))
      x = jnp.concatenate([x[:, :1], regs, x[:, 1:]], axis=1)
    x = self.blocks(x)
    y = self.norm(x).astype(jnp.float32)
    r = self.num_registers
    return {"x_norm_clstoken": y[:, 0], "x_norm_regtokens": y[:, 1:1 + r],
            "x_norm_patchtokens": y[:, 1 + r:], "x_prenorm": x.astype(jnp.float32)}


_FIELDS = ("width", "depth", "num_heads", "patch_size", "image_size", "num_registers", "mlp_ratio",
           "ffn", "layerscale", "interpolate_antialias", "interpolate_offset")


def config_for(size: str, num_registers: int = 0, **overrides: Any) -> dict[str, Any]:
  """The config of a released model: size "S", "B", "L" or "g" (patch 14, 518 px, LayerScale),
  with registers 0 or 4, plus overrides."""
  if size not in SIZES:
    raise ValueError(f"DINOv2 size must be one of {sorted(SIZES)}, got {size!r}")
  width, depth, heads, ffn = SIZES[size]
  cfg = dict(width=width, depth=depth, num_heads=heads, patch_size=14, image_size=518,
             num_registers=num_registers, ffn=ffn, layerscale=1.0)
  cfg.update(overrides)
  return cfg


# make_model(cfg, *, rngs) -> DINOv2 from plain fields (`_FIELDS`, `size` for a preset, the common
# options; unknown keys raise ValueError); abstract_params(cfg): its parameter shapes, unallocated.
make_model, abstract_params = options.tower_builders(
    DINOv2, _FIELDS, model="DINOv2",
    preset=lambda size, kw: config_for(size, kw.get("num_registers", 0)))


def features_fn(cfg: Mapping[str, Any]):
  """fn(params, images) -> the `__call__` dict of `make_model(cfg)` with `params` (an nnx.State, e.g.
  from `convert.dinov2.load`), for frozen use: it merges the parameters into a fresh module each
  call (jit-friendly; the parameters are only read)."""
  return options.frozen_apply(make_model, cfg)
