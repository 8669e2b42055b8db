"""DualToken (Song et al. 2025, arXiv 2503.14324): two independent vocabularies from one SigLIP.

  images [B, S, S, 3] in [0, 1] -> SigLIP-shaped encoder (trainable; initialised from SigLIP)
    shallow: hidden_states[pixel_layer] (the paper: an early block, 6 of SigLIP-so400m's 27)
      -> Dense -> VQ over the PIXEL codebook -> pixel ids [B, N]
      -> Dense -> pixel decoder (shared Blocks + linear to p x p x 3 patches) -> images
    deep: last_hidden_state (after post_layernorm)
      -> Dense -> VQ over the SEMANTIC codebook -> semantic ids [B, N]
      -> Dense back to the tower width -> semantic features [B, N, W]
  tokens int32 [B, N, 2]: (semantic id, pixel id) of each patch, two vocabularies of K codes each.

Losses (the trainer adds the pixel reconstruction terms from `recon`):
  semantic = semantic_loss_weight * mean ||semantic features - teacher||^2, the distillation of the
    frozen original SigLIP's last_hidden_state (the teacher keeps the semantics the encoder would
    lose while it learns to reconstruct);
  each VQ's codebook and commitment terms (`quantizers.vq`, Euclidean, beta = commitment_cost),
  prefixed semantic_ / pixel_.
The two quantizers never see each other's codebook: the pixel ids depend only on the pixel codebook
and the encoder, the semantic ids only on the semantic codebook and the encoder (tested).

Frozen teacher: `siglip/` (as TokenFlow's tower: stop-gradient'ed, never decayed); load released
weights into both the teacher and the encoder with `tokenflow.with_siglip(params, path, siglip,
into=("siglip", "encoder"))`. The tiny config is random (mechanics only).

Differences from the paper (no code was released to check against): the paper quantizes each branch
with residual quantization (several levels per patch); here one VQ level per branch. The pixel decoder
here is a small ViT decoder; the paper's decoder architecture is not reproduced.

Dimension names: B batch, S image size, p patch, N = (S/p)^2 patches, W tower width, K codebook size.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtok.nn import siglip as siglip_lib
from jaxtok.nn.block import Block
from jaxtok.nn.dense import Dense
from jaxtok.nn.embeddings import trunc_normal
from jaxtok.nn.norm import Norm
from jaxtok.nn.options import model_kwargs
from jaxtok.nn.stack import Stack
from jaxtok.nn.vit import unpatchify
from jaxtok.quantizers import vq
from jaxtok.sharding import logical_init
from jaxtok.tokenizers.api import (EncodeOutput, TrainOutput, as_dict, check_images,
                                   check_num_tokens, check_target, compute_dtype)
from jaxtok.tokenizers.bottleneck import symmetric_uniform
from jaxtok.tokenizers.tokenflow import siglip_tower

sg = jax.lax.stop_gradient
BRANCHES = ("semantic", "pixel")


class PixelDecoder(nnx.Module):
  """codes [B, N, D] -> images [B, g*p, g*p, 3] float32: Dense(D -> W) + learned positions, Blocks,
  LayerNorm, Dense(W -> p*p*3), unpatchify."""

  def __init__(self, code_dim: int, grid: int, patch: int, *, width: int, depth: int, num_heads: int,
               dtype=jnp.float32, remat: Any = "none", scan_layers: bool = False,
               attention_impl=None, rngs: nnx.Rngs):
    self.grid, self.patch = grid, patch
    self.proj = Dense(code_dim, width, (None, "embed"), dtype=dtype, rngs=rngs)
    self.pos_embed = nnx.Param(logical_init(trunc_normal(0.02), None, "embed")(
        rngs.params(), (grid * grid, width), jnp.float32))
    block = lambda r: Block(width, num_heads, mlp_hidden=4 * width, norm_eps=1e-6,
                            implementation=attention_impl, dtype=dtype, rngs=r)
    self.blocks = Stack(depth, block, scan_layers=scan_layers, remat=remat, rngs=rngs)
    self.norm = Norm(width, eps=1e-6, dtype=dtype, rngs=rngs)
    self.out = Dense(width, patch * patch * 3, ("embed", None), dtype=dtype, rngs=rngs)

  def __call__(self, codes: jax.Array) -> jax.Array:
    x = self.proj(codes) + self.pos_embed.get_value().astype(codes.dtype)
    x = self.out(self.norm(self.blocks(x))).astype(jnp.float32)
    return unpatchify(x, self.patch, self.grid, self.grid)


class DualToken(nnx.Module):
  """DualToken: images [B, S, S, 3] -> tokens int32 [B, N, 2] (semantic, pixel) -> images."""

  def __init__(self, *, image_size: int = 256, siglip: dict | None = None, pixel_layer: int = 6,
               codebook_size: int = 16384, code_dim: int = 32, decoder_width: int = 768,
               decoder_depth: int = 8, decoder_heads: int = 12, commitment_cost: float = 0.25,
               semantic_loss_weight: float = 1.0, dtype: Any = jnp.float32, remat: Any = "none",
               scan_layers: bool = False, attention_impl: str | None = None, rngs: nnx.Rngs):
    dtype = compute_dtype(dtype)
    self.siglip = siglip_tower(siglip, dtype, rngs=rngs)
    self.encoder = siglip_tower(siglip, dtype, rngs=rngs)  # the same shape, trained
    if self.siglip.image_size != image_size:
      raise ValueError(f"siglip image_size ({self.siglip.image_size}) must equal image_size "
                       f"({image_size})")
    self.pixel_layer = self.encoder.check_layer(pixel_layer)
    if not 1 <= self.pixel_layer < self.encoder.depth:
      raise ValueError(f"pixel_layer must name a shallow block output in [1, {self.encoder.depth - 1}] "
                       f"(the deep features are the last layer's), got {pixel_layer}")
    if image_size % self.siglip.patch_size:
      raise ValueError(f"image_size ({image_size}) must be a multiple of SigLIP's patch_size "
                       f"({self.siglip.patch_size}): the pixel decoder tiles the whole image")
    for name, v in (("commitment_cost", commitment_cost),
                    ("semantic_loss_weight", semantic_loss_weight)):
      if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
        raise ValueError(f"DualToken {name} must be a number >= 0, got {v!r}")
    self.image_size, self.codebook_size = image_size, codebook_size
    self.grid = image_size // self.siglip.patch_size
    self.num_latent_tokens = self.grid**2
    self.commitment_cost, self.semantic_loss_weight = float(commitment_cost), float(semantic_loss_weight)
    width = self.siglip.width
    book = lambda: nnx.Param(logical_init(symmetric_uniform(1.0 / codebook_size), "codebook", None)(
        rngs.params(), (codebook_size, code_dim), jnp.float32))
    self.semantic_in = Dense(width, code_dim, ("embed", None), dtype=dtype, rngs=rngs)
    self.semantic_codebook = book()
    self.semantic_out = Dense(code_dim, width, (None, "embed"), dtype=dtype, rngs=rngs)
    self.pixel_in = Dense(width, code_dim, ("embed", None), dtype=dtype, rngs=rngs)
    self.pixel_codebook = book()
    self.pixel_decoder = PixelDecoder(code_dim, self.grid, self.siglip.patch_size,
                                      width=decoder_width, depth=decoder_depth,
                                      num_heads=decoder_heads, dtype=dtype, remat=remat,
                                      scan_layers=scan_layers, attention_impl=attention_impl,
                                      rngs=rngs)

  def _state(self, branch: str) -> vq.VQState:
    book = getattr(self, f"{branch}_codebook").get_value()
    k = book.shape[0]
    return vq.VQState(book, jnp.zeros((k,), jnp.float32), jnp.zeros_like(book), jnp.array(True))

  def features(self, images: jax.Array) -> dict[str, jax.Array]:
    """The encoder's shallow (pixel) and deep (semantic) features, [B, N, W] float32 each."""
    k = self.pixel_layer
    out = self.encoder(images, layers=(k,))
    return {"pixel": out[f"hidden_states_{k}"], "semantic": out["last_hidden_state"]}

  def _quantize(self, images: jax.Array):
    feats = self.features(images)
    outs = {}
    for branch in BRANCHES:
      z = getattr(self, f"{branch}_in")(feats[branch]).astype(jnp.float32)
      outs[branch] = vq.quantize(z, self._state(branch), beta=self.commitment_cost)
    return outs

  def _check_full_grid(self, num_tokens):
    num_tokens = check_num_tokens(num_tokens, self.num_latent_tokens)
    if num_tokens not in (None, self.num_latent_tokens):
      raise ValueError(f"num_tokens must be None or {self.num_latent_tokens} for DualToken's patch "
                       f"grid, got {num_tokens}")

  def encode(self, images: jax.Array, *, num_tokens: int | None = None,
             rng: jax.Array | None = None, train: bool = False) -> EncodeOutput:
    """images [B, S, S, 3] in [0, 1] -> tokens int32 [B, N, 2] (semantic id, pixel id), codes
    [B, N, 2 * D] (semantic then pixel code). num_tokens: None or N."""
    del rng, train
    check_images(images, self.image_size)
    self._check_full_grid(num_tokens)
    outs = self._quantize(images)
    tokens = jnp.stack([outs[b].indices for b in BRANCHES], axis=-1)
    codes = jnp.concatenate([outs[b].codes for b in BRANCHES], axis=-1)
    losses = {f"{b}_{k}": v for b in BRANCHES for k, v in outs[b].losses.items()}
    metrics = {f"{b}_{k}": v for b in BRANCHES for k, v in outs[b].metrics.items()}
    return EncodeOutput(tokens, codes, losses, metrics)

  def _codes(self, tokens: jax.Array, branch: str) -> jax.Array:
    if tokens.ndim != 3 or tokens.shape[1:] != (self.num_latent_tokens, 2):
      raise ValueError(f"tokens must have shape [B, {self.num_latent_tokens}, 2] (semantic id, pixel "
                       f"id), got {tuple(tokens.shape)}")
    return vq.indices_to_codes(tokens[..., BRANCHES.index(branch)], self._state(branch))

  def decode(self, tokens: jax.Array, *, rng: jax.Array | None = None,
             train: bool = False) -> jax.Array:
    """tokens int32 [B, N, 2] -> images [B, S, S, 3] float32 from the pixel ids alone."""
    del rng, train
    return self.pixel_decoder(self._codes(tokens, "pixel"))

  def decode_semantic(self, tokens: jax.Array) -> jax.Array:
    """tokens int32 [B, N, 2] -> semantic features [B, N, W] float32 from the semantic ids alone."""
    return self.semantic_out(self._codes(tokens, "semantic")).astype(jnp.float32)

  def train_forward(self, images: jax.Array, *, rng: jax.Array, step: int | jax.Array | None = None,
                    target: str = "pixels", perturb: dict | None = None,
                    num_tokens: int | None = None) -> TrainOutput:
    """Training pass: recon [B, S, S, 3]; losses {semantic, semantic_/pixel_ codebook and
    commitment}; metrics of both quantizers. No proxy head, no perturbation."""
    del rng, step
    check_target(target, proxy_head=False, model="DualToken")
    if perturb is not None:
      raise ValueError(f"DualToken does not implement RobusTok perturbation (loss.perturb); got "
                       f"{perturb!r}")
    self._check_full_grid(num_tokens)
    check_images(images, self.image_size)
    outs = self._quantize(images)
    teacher = sg(self.siglip(images)["last_hidden_state"])
    semantic = self.semantic_out(outs["semantic"].codes).astype(jnp.float32)
    distill = jnp.mean(jnp.square(semantic - teacher))
    losses = {f"{b}_{k}": v for b in BRANCHES for k, v in outs[b].losses.items()}
    losses["semantic"] = self.semantic_loss_weight * distill
    metrics = {f"{b}_{k}": v for b in BRANCHES for k, v in outs[b].metrics.items()}
    return TrainOutput(self.pixel_decoder(outs["pixel"].codes), losses, metrics)


_FIELDS = ("image_size", "siglip", "pixel_layer", "codebook_size", "code_dim", "decoder_width",
           "decoder_depth", "decoder_heads", "commitment_cost", "semantic_loss_weight")


def make_model(cfg: Mapping[str, Any], *, rngs: nnx.Rngs) -> DualToken:
  """A DualToken from _FIELDS and the common options; an unknown key raises ValueError."""
  kwargs = model_kwargs(as_dict(cfg), _FIELDS, model="DualToken", cls=DualToken)
  if "siglip" in kwargs:
    kwargs["siglip"] = dict(kwargs["siglip"])
  return DualToken(**kwargs, rngs=rngs)
