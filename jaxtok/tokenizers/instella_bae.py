"""Instella-T2I's binary autoencoder as released (AMD, "Instella-T2I: Pushing the Limits of 1D
Discrete Latent Space Image Generation"; `bae/ae_model.py BAE_Model`, vendored in sprintml/BitMark).

It is not a TiTok: a Llama-style transformer with Flux's three-axis RoPE over [latent tokens; image
patches], a resolution change inside each stack, and a binary bottleneck with a learned bit embedding.

  encoder: images in [-1, 1] -> Conv p x p stride p (`PatchEmbed`) -> [K learned latent tokens;
           G patch tokens] -> encoder blocks, after block i in `downsample_idx` the patch grid is
           halved (DC down block) and the RoPE ids recomputed -> the K latent tokens -> RMSNorm ->
           Linear(W, W) -> Linear(W, n) bit logits
  bits:    `quantizers.binary` (Bernoulli(sigmoid(z / T)) in training, sigmoid(z) > 1/2 otherwise;
           straight-through through sigmoid(z); aux loss mean(sigma (1 - sigma)))
  decoder: z_q = bits @ E (E [n, W] learned) -> RMSNorm -> Linear(W, Wd) -> [K latents; mask token
           at each of the (G / 4^u) grid cells] -> decoder blocks, after block i in `upsample_idx` the
           grid is doubled (DC up block) -> the patch tokens -> RMSNorm -> Linear(Wd, p*p*3) ->
           pixels in [-1, 1]

Block (`nn.block.Block`): pre-RMSNorm (eps 1e-6, learned scale), attention without biases, q and k
RMS-normed per head (learned scale [E]) before RoPE, SwiGLU MLP of hidden 4W without biases.

RoPE: ids [T, 3] per token, latent token k -> (k, 0, 0), patch (y, x) -> (0, y, x); the per-channel
angles are Flux's channel-interleaved tables of `axes_dim` (e.g. (8, 28, 28) for E = 64), applied
with Llama's half-split rotate_half (`nn.rope.rope_angles`, "angles"): the release combines the two
conventions as written here. With `rope_scale` s (the release's `set_scale(bae_scale)`:
s = bae_scale / patch, 1024 / 16 = 64 in its generator configs) the patch ids are spread over
[0, s - 1]: y -> y / (h - 1) * (s - 1); s halves after each down block of the encoder; the decoder
starts from s / 2^u and doubles it after each up block.

DC down block (`resize_layers.DCDownBlock2d`): conv 3x3 stride 2 pad 1 (computed as the SAME
stride-1 conv read at even positions) plus the 2 x 2 mean of the input. DC up block: conv 3x3 to 4W
channels, pixel shuffle, plus the nearest upsampling of the input.

Checked against the release: the decoder's first grid is grid / (2 u) there
(`H // (2 * len(upsample_idx))`), equal to grid / 2^u for the released u = 1 (and u = 2); here grid /
2^u, the inverse of the encoder's halvings. The release decoder's REPA projector exists only when
training with `use_repa` (not in the released config) and is not built here. The autoencoder's
training loop (losses, weights, temperature schedule) is not released; `train_forward` returns the
reconstruction and the quantizer's aux loss, the trainer adding pixel/perceptual losses as for any
tokenizer.

No parameter depends on the image size: the release decodes its 128 x 64 bits at 512, 768 or
1024 px (`test_diff.py --image_size`) with one set of weights; here each size is a config
(`image_size`) over the same parameters. RoPE angles are computed in float32 (diffusers: float64
frequencies times float32 positions, then float32 tables); the parity test holds to 1e-4.

Contract (`tokenizers.api`): images float [B, H, W, 3] in [0, 1]; tokens int32 [B, K, n] bits in
{0, 1} (n > 31, the release's 64) or [B, K] packed (n <= 31, `quantizers.binary`); decode returns
float32 images nominally in [0, 1].

Dimension names: B batch, K latent tokens, G patch tokens, n bits, W encoder width, Wd decoder
width, E head dim.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtok.nn.block import Block
from jaxtok.nn.conv import Conv
from jaxtok.nn.dense import Dense
from jaxtok.nn.norm import Norm
from jaxtok.nn.options import model_kwargs
from jaxtok.nn.rope import flux_angles
from jaxtok.nn.vit import PatchEmbed, unpatchify
from jaxtok.sharding import logical_init
from jaxtok.tokenizers import bottleneck as bottleneck_lib
from jaxtok.tokenizers.api import EncodeOutput, TrainOutput, check_images, check_target

EPS = 1e-6


def token_ids(num_latent: int, h: int, w: int, scale: float | None = None) -> jax.Array:
  """RoPE ids float32 [K + h*w, 3]: latents (k, 0, 0), then the row-major grid (0, y', x') with
  y' = y, or y / (h - 1) * (scale - 1) when scale is given (likewise x)."""
  ys, xs = jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32)
  if scale is not None:
    if h < 2 or w < 2:
      raise ValueError(f"rope_scale needs a grid of at least 2 x 2 at every level, got {h} x {w}")
    ys, xs = ys / (h - 1) * (scale - 1), xs / (w - 1) * (scale - 1)
  grid = jnp.stack(jnp.broadcast_arrays(jnp.zeros((h, w)), ys[:, None], xs[None, :]), axis=-1)
  lat = jnp.zeros((num_latent, 3), jnp.float32).at[:, 0].set(jnp.arange(num_latent))
  return jnp.concatenate([lat, grid.reshape(h * w, 3)], axis=0)


def pixel_shuffle2(x: jax.Array) -> jax.Array:
  """[B, h, w, 4C] -> [B, 2h, 2w, C], torch's pixel_shuffle(2) order: channel 4c + 2i + j goes to
  (2y + i, 2x + j, c)."""
  b, h, w, c4 = x.shape
  x = x.reshape(b, h, w, c4 // 4, 2, 2).transpose(0, 1, 4, 2, 5, 3)
  return x.reshape(b, 2 * h, 2 * w, c4 // 4)


class DownBlock(nnx.Module):
  """DC down block: [B, h, w, W] -> [B, h/2, w/2, W] (module docstring)."""

  def __init__(self, width: int, *, dtype=jnp.float32, rngs: nnx.Rngs):
    self.conv = Conv(width, width, 3, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    pooled = x.astype(jnp.float32).reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))
    return self.conv(x)[:, ::2, ::2] + pooled.astype(self.conv.dtype)


class UpBlock(nnx.Module):
  """DC up block: [B, h, w, W] -> [B, 2h, 2w, W] (module docstring)."""

  def __init__(self, width: int, *, dtype=jnp.float32, rngs: nnx.Rngs):
    self.conv = Conv(width, 4 * width, 3, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    near = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return pixel_shuffle2(self.conv(x)) + near.astype(self.conv.dtype)


def _blocks(width, heads, depth, dtype, impl, rngs) -> nnx.List:
  return nnx.List([Block(width, heads, mlp_hidden=4 * width, mlp="swiglu", mlp_bias=False,
                         norm="rms", norm_eps=EPS, qkv_bias=False, out_bias=False, qk_norm="rms",
                         qk_norm_affine=True, qk_norm_eps=EPS, rope="angles", implementation=impl,
                         dtype=dtype, rngs=rngs) for _ in range(depth)])


def _check_idx(name: str, idx: Sequence[int], depth: int) -> tuple[int, ...]:
  idx = tuple(int(i) for i in idx)
  if len(set(idx)) != len(idx) or any(not 0 <= i < depth for i in idx):
    raise ValueError(f"{name} must hold distinct block indices in [0, {depth}), got {idx}")
  return idx


class Tower(nnx.Module):
  """The shared body of encoder and decoder: blocks over [K latents; grid], the grid resized after
  the blocks in `resize_idx` (down or up), RoPE ids recomputed each time."""

  def __init__(self, width: int, heads: int, depth: int, resize_idx: Sequence[int], *,
               up: bool, axes_dim: Sequence[int], dtype, impl=None, rngs: nnx.Rngs):
    if width % heads or sum(axes_dim) != width // heads:
      raise ValueError(f"axes_dim must sum to the head dim {width // max(heads, 1)} (width {width} / "
                       f"heads {heads}), got {tuple(axes_dim)}")
    self.resize_idx = _check_idx("upsample_idx" if up else "downsample_idx", resize_idx, depth)
    self.axes_dim, self.up = tuple(axes_dim), up
    self.transformer_blocks = _blocks(width, heads, depth, dtype, impl, rngs)
    make = UpBlock if up else DownBlock
    self.resize_layers = nnx.List([make(width, dtype=dtype, rngs=rngs) for _ in self.resize_idx])

  def __call__(self, x: jax.Array, num_latent: int, h: int, w: int, scale: float | None
               ) -> tuple[jax.Array, int, int]:
    """x [B, K + h*w, W] -> (x [B, K + h'*w', W], h', w')."""
    angles = flux_angles(token_ids(num_latent, h, w, scale), self.axes_dim)
    resized = 0
    for i, block in enumerate(self.transformer_blocks):
      x = block(x, positions=angles)
      if i in self.resize_idx:
        lat, grid = x[:, :num_latent], x[:, num_latent:].reshape(x.shape[0], h, w, -1)
        grid = self.resize_layers[resized](grid)
        resized += 1
        h, w = grid.shape[1], grid.shape[2]
        if scale is not None:
          scale = scale * 2 if self.up else scale // 2
        x = jnp.concatenate([lat, grid.reshape(x.shape[0], h * w, -1).astype(lat.dtype)], axis=1)
        angles = flux_angles(token_ids(num_latent, h, w, scale), self.axes_dim)
    return x, h, w


class InstellaBAE(nnx.Module):
  """The release's binary autoencoder (module docstring).

  Args:
    image_size, patch_size: input side S (divisible by patch_size * 2^len(downsample_idx)) and p.
    num_latent_tokens: K (release 128). bits: n per token (release `codebook_size` 64).
    encoder_width, encoder_depth, encoder_heads: release 768 (12 x 64), 12, 12.
    decoder_width, decoder_depth, decoder_heads: release 1024 (16 x 64), 16, 16.
    downsample_idx, upsample_idx: encoder / decoder blocks followed by a resize (release (7,), (7,));
      equally many.
    axes_dim: RoPE channels per id axis, summing to both head dims (release (8, 28, 28)).
    rope_scale: None or s (the release's bae_scale / patch_size; its generator configs: 64).
    temperature, aux_weight: the binary quantizer's (release T = 0.1; aux weight not released).
    dtype: compute dtype (parameters float32); attention_impl: `nn.attention.attend`'s.
  """

  def __init__(self, *, image_size: int = 512, patch_size: int = 16, num_latent_tokens: int = 128,
               bits: int = 64, encoder_width: int = 768, encoder_depth: int = 12,
               encoder_heads: int = 12, decoder_width: int = 1024, decoder_depth: int = 16,
               decoder_heads: int = 16, downsample_idx: Sequence[int] = (7,),
               upsample_idx: Sequence[int] = (7,), axes_dim: Sequence[int] = (8, 28, 28),
               rope_scale: float | None = None, temperature: float = 0.1, aux_weight: float = 1.0,
               dtype=jnp.float32, attention_impl=None, rngs: nnx.Rngs):
    if len(tuple(downsample_idx)) != len(tuple(upsample_idx)):
      raise ValueError(f"downsample_idx and upsample_idx must have equally many entries (the "
                       f"decoder undoes the encoder's halvings), got {tuple(downsample_idx)} and "
                       f"{tuple(upsample_idx)}")
    factor = patch_size * 2 ** len(tuple(downsample_idx))
    if image_size % factor:
      raise ValueError(f"image_size must be divisible by patch_size * 2^len(downsample_idx) = "
                       f"{factor}, got {image_size}")
    if rope_scale is not None and not rope_scale > 1:
      raise ValueError(f"rope_scale must be None or > 1, got {rope_scale!r}")
    self.image_size, self.patch_size, self.num_latent_tokens = image_size, patch_size, num_latent_tokens
    self.bits, self.rope_scale, self.dtype = bits, rope_scale, dtype
    self.grid = image_size // patch_size
    self.num_resize = len(tuple(downsample_idx))
    self.quantizer = "binary"
    self.bottleneck = bottleneck_lib.Bottleneck.create(
        "binary", bits, options=dict(temperature=temperature, aux_weight=aux_weight))
    self.codebook_size = self.bottleneck.codebook_size
    normal = nnx.initializers.normal(0.02)
    # Encoder.
    self.patch_embedder = PatchEmbed(patch_size, encoder_width, dtype=dtype, rngs=rngs)
    self.latent_tokens = nnx.Param(logical_init(normal, None, "embed")(
        rngs.params(), (num_latent_tokens, encoder_width), jnp.float32))
    self.encoder = Tower(encoder_width, encoder_heads, encoder_depth, downsample_idx, up=False,
                         axes_dim=axes_dim, dtype=dtype, impl=attention_impl, rngs=rngs)
    self.encoder_norm = Norm(encoder_width, kind="rms", eps=EPS, dtype=dtype, rngs=rngs)
    self.encoder_proj = Dense(encoder_width, encoder_width, ("embed", "embed"), dtype=dtype,
                              rngs=rngs)
    self.bit_proj = Dense(encoder_width, bits, ("embed", None), dtype=dtype, rngs=rngs)
    self.bit_embed = nnx.Param(logical_init(normal, None, "embed")(
        rngs.params(), (bits, encoder_width), jnp.float32))
    # Decoder.
    self.decoder_in_norm = Norm(encoder_width, kind="rms", eps=EPS, dtype=dtype, rngs=rngs)
    self.decoder_in = Dense(encoder_width, decoder_width, ("embed", "embed"), dtype=dtype, rngs=rngs)
    self.mask_token = nnx.Param(logical_init(normal, "embed")(
        rngs.params(), (decoder_width,), jnp.float32))
    self.decoder = Tower(decoder_width, decoder_heads, decoder_depth, upsample_idx, up=True,
                         axes_dim=axes_dim, dtype=dtype, impl=attention_impl, rngs=rngs)
    self.decoder_norm = Norm(decoder_width, kind="rms", eps=EPS, dtype=dtype, rngs=rngs)
    self.to_pixel = Dense(decoder_width, patch_size * patch_size * 3, ("embed", None), dtype=dtype,
                          rngs=rngs)

  # ---- encoder

  def _scale(self) -> float | None:
    return None if self.rope_scale is None else float(self.rope_scale)

  def encode_logits(self, images: jax.Array) -> jax.Array:
    """images float [B, S, S, 3] in [0, 1] -> bit logits float32 [B, K, n]."""
    check_images(images, self.image_size)
    x = self.patch_embedder(images.astype(jnp.float32) * 2.0 - 1.0)  # the release reads [-1, 1]
    b, k = x.shape[0], self.num_latent_tokens
    lat = jnp.broadcast_to(self.latent_tokens.get_value().astype(x.dtype), (b,) + self.latent_tokens.shape)
    x, _, _ = self.encoder(jnp.concatenate([lat, x], axis=1), k, self.grid, self.grid,
                           self._scale())
    h = self.encoder_proj(self.encoder_norm(x[:, :k]))
    return self.bit_proj(h).astype(jnp.float32)

  def _quantize(self, images, rng, train):
    return self.bottleneck.quantize({}, self.encode_logits(images), rng=rng, train=train)

  def encode(self, images: jax.Array, *, num_tokens: int | None = None, rng: jax.Array | None = None,
             train: bool = False) -> EncodeOutput:
    """images [B, S, S, 3] in [0, 1] -> tokens (bits, module docstring), codes float [B, K, n] in
    {0, 1} (straight-through), losses {"binary_aux"}, metrics. train samples the bits (needs rng)."""
    self._check_num_tokens(num_tokens)
    tokens, codes, losses, metrics = self._quantize(images, rng, train)
    return EncodeOutput(tokens, codes, losses, metrics)

  def _check_num_tokens(self, num_tokens):
    if num_tokens not in (None, self.num_latent_tokens):
      raise ValueError(f"the Instella autoencoder encodes all {self.num_latent_tokens} tokens "
                       f"(no nested prefixes), got num_tokens={num_tokens!r}")

  # ---- decoder

  def decode_codes(self, codes: jax.Array) -> jax.Array:
    """codes float [B, K, n] (bits, or their straight-through form) -> pixels float32
    [B, S, S, 3] in the release's range [-1, 1]."""
    z = jnp.matmul(codes.astype(jnp.float32), self.bit_embed.get_value(),
                   precision=jax.lax.Precision.HIGHEST)  # the release's z_q = bits @ E
    lat = self.decoder_in(self.decoder_in_norm(z))
    b, k = lat.shape[0], lat.shape[1]
    g = self.grid // 2 ** self.num_resize
    scale = self._scale()
    if scale is not None:
      scale = scale // 2 ** self.num_resize
    mask = jnp.broadcast_to(self.mask_token.get_value().astype(lat.dtype), (b, g * g, lat.shape[-1]))
    x, h, w = self.decoder(jnp.concatenate([lat, mask], axis=1), k, g, g, scale)
    pixels = self.to_pixel(self.decoder_norm(x[:, k:])).astype(jnp.float32)
    return unpatchify(pixels, self.patch_size, h, w)

  def decode(self, tokens: jax.Array, *, rng: jax.Array | None = None, train: bool = False
             ) -> jax.Array:
    """tokens (bits) -> images float32 [B, S, S, 3], nominally [0, 1]."""
    del rng, train
    self.bottleneck.check_tokens(tokens, self.num_latent_tokens)
    if tokens.shape[1] != self.num_latent_tokens:
      raise ValueError(f"tokens must hold all {self.num_latent_tokens} tokens, got shape "
                       f"{tuple(tokens.shape)}")
    codes = self.bottleneck.indices_to_codes({}, tokens)
    return (self.decode_codes(codes) + 1.0) * 0.5

  def train_forward(self, images: jax.Array, *, rng: jax.Array, step: Any = None,
                    target: str = "pixels", perturb: Any = None,
                    num_tokens: int | None = None) -> TrainOutput:
    """Bits sampled at temperature T, decoded through their straight-through codes: recon float32
    [B, S, S, 3] (nominally [0, 1]), losses {"binary_aux"}, the quantizer's metrics. No proxy
    codes, perturbation or token prefixes (ValueError)."""
    del step
    check_target(target, proxy_head=False, model="the Instella autoencoder")
    if perturb is not None:
      raise ValueError("RobusTok perturbation needs vq or fsq tokens; the Instella autoencoder's are "
                       "bits")
    self._check_num_tokens(num_tokens)
    _, codes, losses, metrics = self._quantize(images, rng, True)
    return TrainOutput((self.decode_codes(codes) + 1.0) * 0.5, losses, metrics)


FIELDS = ("image_size", "patch_size", "num_latent_tokens", "bits", "encoder_width", "encoder_depth",
          "encoder_heads", "decoder_width", "decoder_depth", "decoder_heads", "downsample_idx",
          "upsample_idx", "axes_dim", "rope_scale", "temperature", "aux_weight")


def make_model(cfg: Mapping[str, Any], *, rngs: nnx.Rngs) -> InstellaBAE:
  """An InstellaBAE from its constructor's fields plus `nn.options.COMMON` and `name`; any other key
  raises ValueError naming the valid ones."""
  kwargs = model_kwargs(cfg, FIELDS, model="instella_bae", cls=InstellaBAE)
  for key in ("downsample_idx", "upsample_idx", "axes_dim"):
    if key in kwargs:
      kwargs[key] = tuple(int(v) for v in kwargs[key])
  remat, scan = kwargs.pop("remat"), kwargs.pop("scan_layers")
  if remat != "none" or scan:
    raise ValueError(f"the Instella autoencoder interleaves resize layers with its blocks and takes "
                     f"neither remat nor scan_layers, got remat={remat!r}, scan_layers={scan!r}")
  return InstellaBAE(**kwargs, rngs=rngs)
