"""GPSToken (xtudbxk/GPSToken): an image as S 2D Gaussians with texture features.

Token s = (sigma_x, sigma_y, rho, x, y, f_1..f_C): a Gaussian in the [-1, 1] pixel frame (standard
deviations, correlation coefficient, mean; see `gaussian_render`) and a C-dim texture feature.
Tokens are continuous: float32 [B, S, 5 + C].

Encode (the release's architecture, xtudbxk/GPSToken `models/gpstoken.py` + `models/attnblock.py`,
commit 372231d; parameter names map one to one, see `convert/gpstoken.py`):
  1. `gps_partition.partition_batch` (numpy, through jax.pure_callback: discrete, no gradient) cuts
     each image into S texture-homogeneous regions by entropy-driven greedy splitting and turns each
     region into an initial Gaussian (sigma = 2/3 of the region's extent, rho 0, mean at its centre).
  2. Stem on the image in [-1, 1]: conv3x3 (3 -> Cs) + two taming ResNet blocks (release:
     `preprocess_img`, Cs = 128). Each region's features are pooled to r x r bins by RoIAlign exactly
     as the release calls torchvision's (`aligned=True`, `sampling_ratio=-1`: ceil(side / r) samples
     per bin and axis, box = the region's inclusive pixel range; `roi_align`), then a 1x1 conv
     (Dense Cs -> W, `roialign_layer`) gives RoI features [B, S, r*r, W].
  3. Gaussian token = learned embedding + MLP(initial Gaussian) (Linear 5 -> W, exact GELU,
     Linear W -> W). Each of `depth` refinement layers first adds Linear(r*r -> 1) of the token's own
     RoI features (`roimlp`, per layer), then runs a pre-LN `nn.Block` (8 heads, MLP 4W, exact GELU,
     LayerNorm eps 1e-5) over the S Gaussian tokens only (no image patch tokens, no final norm).
  4. Heads: a zero-initialised Linear(W -> 5) gives deltas applied in logit space (sigma =
     sigmoid(logit(sigma0) + d), (rho, x, y) = 2 sigmoid(logit((v0 + 1) / 2) + d) - 1), a
     Linear(W -> C) gives the features.
Decode: `gaussian_render.render` splats the features at render_size x render_size (peak-normalised
densities, support |dx| <= dmax sigma_x and |dy| <= dmax sigma_y, as gscuda's kernel) -> the
release's taming decoder (`DecoderNP` at _np = 1: conv_in, mid ResNet / attention / ResNet, per
level num_res_blocks + 1 ResNet blocks and nearest x2 + conv3x3, GroupNorm, SiLU, conv_out), whose
output in [-1, 1] is mapped to [0, 1].
Training: train_forward returns recon; the trainer's pixel / perceptual / GAN losses train the whole
pipeline end to end through the renderer.

Approximations (stated, not hidden): `DecoderNP`'s GroupNorm divides by (std + eps) instead of
sqrt(var + eps) (eps 1e-6: a relative difference of about eps / std); the release also splits large
images into _np x _np patches of Gaussians, which is not supported here (_np = 1); `refine` clips
the initial values to [1e-4, 1 - 1e-4] before the logit (the release takes the logit unclipped; the
partition's initial Gaussians lie inside that range). Cost: `roi_align` is two dense contractions
with per-region weight matrices, an intermediate of B * S * r * W_img * Cs floats (about 134 MB per
256 px image at M128), traded for exactness and static shapes.

Generation order (`layout_then_texture` / `from_layout_texture`): GPSToken generates in two stages,
spatial layout (all Gaussians' geometry) first, then texture conditioned on it. A GPT over GPSToken
tokens consumes the sequence [layout_1..layout_S, texture_1..texture_S] (Gaussians in raster order of
their means, `raster_order`): positions 1..S predict 5-d geometry vectors, positions S+1..2S predict
C-d features, each position attending to all earlier ones, so every texture is predicted with the
whole layout in context; continuous tokens need a continuous head (e.g. `generators.heads.FlowHead`,
as MAR), and two separate input/output projections for the two token kinds.

Dimension names: B batch, S Gaussians (tokens), C feature dim, W width, Cs stem channels, r RoI
side, R render size.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtok.nn import conv as conv_lib
from jaxtok.nn.dense import Dense
from jaxtok.nn.block import Block
from jaxtok.nn.embeddings import LearnedEmbedding
from jaxtok.nn.options import model_kwargs
from jaxtok.nn.stack import remat_call
from jaxtok.quantizers import base
from jaxtok.tokenizers import flextok_vae, gaussian_render, gps_partition
from jaxtok.tokenizers.api import (EncodeOutput, TrainOutput, as_dict, check_images,
                                   check_num_tokens, check_target, compute_dtype)

GEOMETRY = 5  # sigma_x, sigma_y, rho, x, y
_EPS = 1e-4


# ----------------------------------------------------------------------------- pure functions


def split_tokens(tokens: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """[..., S, 5 + C] -> (sigmas [..., S, 3], means [..., S, 2], features [..., S, C])."""
  return tokens[..., :3], tokens[..., 3:5], tokens[..., 5:]


def raster_order(tokens: jax.Array) -> jax.Array:
  """int32 [B, S]: the Gaussians sorted by their mean's row (y), then column (x)."""
  y, x = tokens[..., 4], tokens[..., 3]
  return jnp.lexsort((x, y), axis=-1).astype(jnp.int32)


def layout_then_texture(tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
  """GPSToken's generation order: tokens [B, S, 5 + C] -> (layout [B, S, 5], texture [B, S, C]),
  both in `raster_order`: a generator produces all of layout first, then texture given layout."""
  order = raster_order(tokens)
  t = jnp.take_along_axis(tokens, order[..., None], axis=1)
  return t[..., :GEOMETRY], t[..., GEOMETRY:]


def from_layout_texture(layout: jax.Array, texture: jax.Array) -> jax.Array:
  """The inverse up to the order of the Gaussians (a set: rendering ignores it): [B, S, 5 + C]."""
  return jnp.concatenate([layout, texture], axis=-1)


def _roi_axis_weights(start: jax.Array, end: jax.Array, r: int, size: int) -> jax.Array:
  """Per-bin pixel weights along one axis of torchvision's RoIAlign (aligned, adaptive sampling):
  start, end [B, S] box edges in pixel units (already shifted by -0.5) -> float32 [B, S, r, size].

  Bin p spans [start + p L / r, start + (p + 1) L / r], L = end - start; it averages g = ceil(L / r)
  samples at (i + 0.5) / g of the bin (i < g). A sample below -1 or above `size` counts as 0; one in
  [-1, 0] reads pixel 0; from size - 1 on it reads the last pixel; else linear interpolation. The 2D
  average of bilinear samples factorises into these per-axis weights (the validity test and the
  count g_y g_x are products too), so RoIAlign is wy @ feature @ wx^T.
  """
  length = end - start
  grid = jnp.ceil(length / r)  # torchvision's roi_bin_grid for sampling_ratio <= 0
  max_grid = max(1, -(-size // r))  # L <= size - 1, so g never exceeds this
  step = (length / r)[..., None, None]
  i = jnp.arange(max_grid, dtype=jnp.float32)
  p = jnp.arange(r, dtype=jnp.float32)[:, None]
  pos = start[..., None, None] + p * step + (i + 0.5) * step / jnp.maximum(grid, 1.0)[..., None, None]
  use = (i < grid[..., None, None]) & (pos >= -1.0) & (pos <= size)
  y = jnp.maximum(pos, 0.0)
  low = jnp.floor(y)
  last = low >= size - 1
  low = jnp.where(last, size - 1.0, low)
  high = jnp.where(last, size - 1.0, low + 1.0)
  frac = jnp.where(last, 0.0, y - low)
  cols = jnp.arange(size, dtype=jnp.float32)
  w = ((cols == low[..., None]) * (1.0 - frac)[..., None] + (cols == high[..., None]) * frac[..., None])
  w = jnp.sum(w * use[..., None], axis=-2)  # [B, S, r, size]
  return w / jnp.maximum(grid, 1.0)[..., None, None]


def roi_align(feat: jax.Array, regions: jax.Array, r: int) -> jax.Array:
  """RoIAlign of feat [B, H, W, C] over regions [B, S, 4] (r0, r1, c0, c1 inclusive pixel ranges)
  -> float32 [B, S, r, r, C], as the release calls torchvision.ops.RoIAlign(output_size=r,
  spatial_scale=1, sampling_ratio=-1, aligned=True) on the boxes (c0, r0, c1, r1)."""
  _, h, w, _ = feat.shape
  reg = regions.astype(jnp.float32) - 0.5  # aligned=True: pixel centres at integer + 0.5
  wy = _roi_axis_weights(reg[..., 0], reg[..., 1], r, h)
  wx = _roi_axis_weights(reg[..., 2], reg[..., 3], r, w)
  rows = jnp.einsum("bsph,bhwc->bspwc", wy, feat.astype(jnp.float32))
  return jnp.einsum("bspwc,bsqw->bspqc", rows, wx)


def _logit(p: jax.Array) -> jax.Array:
  p = jnp.clip(p, _EPS, 1.0 - _EPS)
  return jnp.log(p) - jnp.log1p(-p)


def refine(init: jax.Array, delta: jax.Array) -> jax.Array:
  """The release's update of initial Gaussians [..., 5] by deltas [..., 5] in logit space: sigmas in
  (0, 1) through a sigmoid, (rho, x, y) in (-1, 1) through 2 sigmoid - 1; delta 0 returns init."""
  sig = jax.nn.sigmoid(_logit(init[..., :2]) + delta[..., :2])
  rest = 2.0 * jax.nn.sigmoid(_logit((init[..., 2:] + 1.0) * 0.5) + delta[..., 2:]) - 1.0
  return jnp.concatenate([sig, rest], axis=-1)


# ----------------------------------------------------------------------------- the model


class ReleaseDecoder(nnx.Module):
  """The release's pixel decoder (taming `DecoderNP` at _np = 1): feature map [B, R, R, C] ->
  [B, R f, R f, 3] (about [-1, 1]), f = 2**(len(ch_mult) - 1); levels stored in level order
  (`up_blocks[i]`, `up_convs[i - 1]` for i >= 1) and run from the last to the first."""

  def __init__(self, *, ch: int, ch_mult: Sequence[int], num_res_blocks: int, z_channels: int,
               num_groups: int, attention_impl=None, dtype=jnp.float32, rngs: nnx.Rngs):
    n, top = len(ch_mult), ch * ch_mult[-1]
    kw = dict(dtype=dtype, rngs=rngs)
    self.conv_in = conv_lib.Conv(z_channels, top, 3, **kw)
    self.mid = flextok_vae.MidBlock(top, num_groups, True, implementation=attention_impl, **kw)
    levels, block_in = [None] * n, top
    for i in reversed(range(n)):
      out = ch * ch_mult[i]
      blocks = []
      for _ in range(num_res_blocks + 1):
        blocks.append(flextok_vae.ResnetBlock(block_in, out, num_groups, **kw))
        block_in = out
      levels[i] = nnx.List(blocks)
    self.up_blocks = nnx.List(levels)
    self.up_convs = nnx.List([conv_lib.Conv(ch * ch_mult[i], ch * ch_mult[i], 3, **kw)
                              for i in range(1, n)])
    self.norm_out = conv_lib.GroupNorm(ch * ch_mult[0], num_groups=num_groups, **kw)
    self.conv_out = conv_lib.Conv(ch * ch_mult[0], 3, 3, **kw)

  def __call__(self, z: jax.Array) -> jax.Array:
    x = self.mid(self.conv_in(z))
    for i in reversed(range(len(self.up_blocks))):
      for blk in self.up_blocks[i]:
        x = blk(x)
      if i > 0:
        x = self.up_convs[i - 1].after_upsample2(x)  # nearest x2, then conv3x3
    return self.conv_out(jax.nn.silu(self.norm_out(x)))


class GPSToken(nnx.Module):
  """GPSToken tokenizer (see the module docstring; release names in brackets).

  Args:
    image_size: input side.
    num_gaussians: S [gps_num] (64 / 128 / 256 in the released S64 / M128 / L256).
    feature_dim: C [gps_c] (16 in the release).
    min_size, split_weight: the partition's minimum splittable span and entropy exponent (8, 2.5).
    width, depth, num_heads: W [gpsenc_c], the number of refinement layers [gpsenc_n] and heads
      (release 512, 30, 8).
    stem_channels, roi_size: the stem's width (release 128) and r [rois] (release 8).
    render_size: R [gps_rs], side of the rendered feature map (release: 64 for 256px).
    dmax: the renderer's support in standard deviations [gps_dmax] (release 3); None: everywhere.
    dec_ch, dec_ch_mult, dec_num_res_blocks: the decoder, which upsamples by
      2**(len(dec_ch_mult) - 1) = image_size / render_size (release 128, (1, 2, 4), 2).
    num_groups: GroupNorm groups of the stem and the decoder (release 32).
    dtype, remat, attention_impl: common options (remat applies per refinement block).
    scan_layers: must be False (each layer adds its own RoI projection between blocks).
  """

  def __init__(self, *, image_size: int = 256, num_gaussians: int = 128, feature_dim: int = 16,
               min_size: int = 8, split_weight: float = 2.5, width: int = 512, depth: int = 30,
               num_heads: int = 8, stem_channels: int = 128, roi_size: int = 8,
               render_size: int = 64, dmax: float | None = 3.0, dec_ch: int = 128,
               dec_ch_mult: Sequence[int] = (1, 2, 4), dec_num_res_blocks: int = 2,
               num_groups: int = 32, dtype: Any = jnp.float32, remat: Any = "none",
               scan_layers: bool = False, attention_impl: str | None = None, rngs: nnx.Rngs):
    for name, value in (("image_size", image_size), ("num_gaussians", num_gaussians),
                        ("feature_dim", feature_dim), ("roi_size", roi_size), ("depth", depth)):
      base.check_positive_int(name, value)
    if base.check_positive_int("min_size", min_size) < 2:
      raise ValueError(f"min_size must be >= 2 (halves of a split region then span >= 2 pixels, "
                       f"so sigma > 0), got {min_size}")
    if render_size * 2 ** (len(dec_ch_mult) - 1) != image_size:
      raise ValueError(f"render_size * 2**(len(dec_ch_mult) - 1) must equal image_size {image_size}, "
                       f"got {render_size} * {2 ** (len(dec_ch_mult) - 1)}")
    if dmax is not None and dmax <= 0:
      raise ValueError(f"dmax must be > 0 or None, got {dmax}")
    if scan_layers:
      raise ValueError("GPSToken cannot scan its layers (scan_layers must be False): each layer "
                       "adds its own RoI projection before its block")
    dtype = compute_dtype(dtype)
    self.image_size, self.num_gaussians, self.feature_dim = image_size, num_gaussians, feature_dim
    self.num_tokens = num_gaussians
    self.min_size, self.split_weight, self.roi_size = min_size, float(split_weight), roi_size
    self.render_size, self.dmax, self.dtype = render_size, None if dmax is None else float(dmax), dtype
    self.remat = remat
    kw = dict(dtype=dtype, rngs=rngs)
    self.stem = conv_lib.Conv(3, stem_channels, 3, **kw)
    self.stem_blocks = nnx.List([flextok_vae.ResnetBlock(stem_channels, stem_channels, num_groups,
                                                         **kw) for _ in range(2)])
    self.roi_proj = Dense(stem_channels, width, (None, "embed"), **kw)
    self.gauss_embed = LearnedEmbedding(1, width, rngs=rngs)
    self.geom_fc1 = Dense(GEOMETRY, width, (None, "embed"), **kw)
    self.geom_fc2 = Dense(width, width, ("mlp", "embed"), **kw)
    self.roi_mlps = nnx.List([Dense(roi_size * roi_size, 1, (None, None), **kw)
                              for _ in range(depth)])
    self.blocks = nnx.List([Block(width, num_heads, mlp_hidden=4 * width, norm_eps=1e-5,
                                  implementation=attention_impl, **kw) for _ in range(depth)])
    self.to_delta = Dense(width, GEOMETRY, ("embed", None), kernel_init=nnx.initializers.zeros, **kw)
    self.to_features = Dense(width, feature_dim, ("embed", None), **kw)
    self.decoder = ReleaseDecoder(ch=dec_ch, ch_mult=tuple(dec_ch_mult),
                                  num_res_blocks=dec_num_res_blocks, z_channels=feature_dim,
                                  num_groups=num_groups, attention_impl=attention_impl, **kw)

  # ---- pieces

  def initial_gaussians(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(regions int32 [B, S, 4], initial Gaussians float32 [B, S, 5]) from the numpy partition."""
    b, h, w, _ = images.shape

    def host(x):
      regions = gps_partition.partition_batch(x, self.num_gaussians, self.min_size, self.split_weight)
      return regions, gps_partition.regions_to_gaussians(regions, h, w)

    out = (jax.ShapeDtypeStruct((b, self.num_gaussians, 4), jnp.int32),
           jax.ShapeDtypeStruct((b, self.num_gaussians, GEOMETRY), jnp.float32))
    regions, init = jax.pure_callback(host, out, jax.lax.stop_gradient(images).astype(jnp.float32),
                                      vmap_method="sequential")
    return regions, init

  def refine_gaussians(self, images: jax.Array, regions: jax.Array, init: jax.Array) -> jax.Array:
    """The release's `encode` given the partition: images [B, H, W, 3] in [0, 1], regions [B, S, 4]
    (r0, r1, c0, c1 inclusive), initial Gaussians [B, S, 5] -> tokens float32 [B, S, 5 + C]."""
    b, s = init.shape[:2]
    x = images.astype(self.dtype) * 2.0 - 1.0
    feat = self.stem(x)
    for blk in self.stem_blocks:
      feat = blk(feat)
    roi = roi_align(feat, regions, self.roi_size).astype(self.dtype)  # [B, S, r, r, Cs]
    roi = self.roi_proj(roi).reshape(b, s, self.roi_size * self.roi_size, -1)
    roi = jnp.swapaxes(roi, -1, -2)  # [B, S, W, r*r]: each layer mixes a token's r*r bins
    geom = self.geom_fc2(jax.nn.gelu(self.geom_fc1(init.astype(self.dtype)), approximate=False))
    g = self.gauss_embed().astype(self.dtype) + geom
    for roi_mlp, blk in zip(self.roi_mlps, self.blocks):
      g = g + roi_mlp(roi)[..., 0]
      g = remat_call(blk, g, remat=self.remat)
    geometry = refine(init, self.to_delta(g).astype(jnp.float32))
    return jnp.concatenate([geometry, self.to_features(g).astype(jnp.float32)], axis=-1)

  def encode_tokens(self, images: jax.Array) -> jax.Array:
    """images [B, H, W, 3] in [0, 1] -> tokens float32 [B, S, 5 + C]."""
    regions, init = self.initial_gaussians(images)
    return self.refine_gaussians(images, regions, init)

  def render(self, tokens: jax.Array) -> jax.Array:
    """tokens [B, S, 5 + C] -> feature map float32 [B, R, R, C]."""
    sigmas, means, feats = split_tokens(tokens.astype(jnp.float32))
    return gaussian_render.render(sigmas, means, feats, self.render_size, self.render_size, self.dmax)

  def decode_raw(self, tokens: jax.Array) -> jax.Array:
    """tokens -> images float32 [B, H, W, 3] about [0, 1], unclipped (the training reconstruction):
    the release's decoder output in [-1, 1] mapped by (y + 1) / 2."""
    y = self.decoder(self.render(tokens).astype(self.dtype)).astype(jnp.float32)
    return (y + 1.0) * 0.5

  # ---- the tokenizer contract

  def encode(self, images: jax.Array, *, num_tokens: int | None = None,
             rng: jax.Array | None = None, train: bool = False) -> EncodeOutput:
    """images float [B, H, W, 3] in [0, 1] -> EncodeOutput(tokens = codes float32 [B, S, 5 + C],
    losses {}, metrics {mean sigma_x, sigma_y, |rho|}). num_tokens must be None or S (the
    Gaussians form a set: there is no prefix)."""
    del rng, train
    check_images(images, self.image_size)
    if check_num_tokens(num_tokens, self.num_gaussians) not in (None, self.num_gaussians):
      raise ValueError(f"GPSToken encodes all {self.num_gaussians} Gaussians; num_tokens must be "
                       f"None or {self.num_gaussians}, got {num_tokens}")
    tokens = self.encode_tokens(images)
    metrics = {"sigma_x": jnp.mean(tokens[..., 0]), "sigma_y": jnp.mean(tokens[..., 1]),
               "abs_rho": jnp.mean(jnp.abs(tokens[..., 2]))}
    return EncodeOutput(tokens=tokens, codes=tokens, losses={}, metrics=metrics)

  def decode(self, tokens: jax.Array, *, rng: jax.Array | None = None,
             train: bool = False) -> jax.Array:
    """tokens float [B, S', 5 + C] (any number of Gaussians) -> images float32 [B, H, W, 3] in [0, 1]."""
    del rng, train
    base.check_float_array("tokens", tokens, min_rank=3, last_dim=GEOMETRY + self.feature_dim)
    return jnp.clip(self.decode_raw(tokens), 0.0, 1.0)

  def train_forward(self, images: jax.Array, *, rng: jax.Array, step: int | jax.Array | None = None,
                    target: str = "pixels", perturb: dict | None = None,
                    num_tokens: int | None = None) -> TrainOutput:
    """recon [B, H, W, 3] float32 (unclipped) of encode -> render -> decode; no model losses (the
    trainer's pixel / perceptual / GAN terms train everything). perturb and num_tokens raise."""
    del rng, step
    check_target(target, proxy_head=False, model="GPSToken")
    if perturb is not None or num_tokens is not None:
      raise ValueError(f"GPSToken supports neither RobusTok perturbation nor prefix training, got "
                       f"perturb={perturb!r}, num_tokens={num_tokens!r}")
    check_images(images, self.image_size)
    tokens = self.encode_tokens(images)
    metrics = {"sigma_x": jnp.mean(tokens[..., 0]), "sigma_y": jnp.mean(tokens[..., 1]),
               "abs_rho": jnp.mean(jnp.abs(tokens[..., 2]))}
    return TrainOutput(recon=self.decode_raw(tokens), losses={}, metrics=metrics)


_FIELDS = ("image_size", "num_gaussians", "feature_dim", "min_size", "split_weight", "width", "depth",
           "num_heads", "stem_channels", "roi_size", "render_size", "dmax", "dec_ch", "dec_ch_mult",
           "dec_num_res_blocks", "num_groups")


def make_model(cfg: Mapping[str, Any], *, rngs: nnx.Rngs) -> GPSToken:
  """A GPSToken from plain fields (GPSToken's Args); `name` accepted; common options dtype, remat,
  scan_layers, attention_impl. Any other key raises ValueError listing the valid ones. dmax None
  (renders everywhere) is written as dmax=0 in a config."""
  cfg = as_dict(cfg)
  kwargs = model_kwargs(cfg, _FIELDS, model="GPSToken", cls=GPSToken)
  if "dmax" in kwargs:
    kwargs["dmax"] = None if float(kwargs["dmax"]) == 0.0 else float(kwargs["dmax"])
  if "dec_ch_mult" in kwargs:
    kwargs["dec_ch_mult"] = tuple(int(v) for v in kwargs["dec_ch_mult"])
  return GPSToken(**kwargs, rngs=rngs)
