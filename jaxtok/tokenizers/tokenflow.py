"""TokenFlow (Qu et al. 2024, ByteFlow-AI/TokenFlow `tokenflow/tokenizer/vq_model.py`): one index
per position that selects a semantic code AND a pixel code (`quantizers.dual`, shared mapping).

  images [B, S, S, 3] in [0, 1]
   |-- frozen SigLIP vision tower -> hidden_states[siglip_layer] [B, g*g, Wt] (official: -2, the
   |     penultimate block of SigLIP-so400m) -> task layer (Dense, tanh, Dense) -> s [B, g*g, Ds]
   |-- VQGAN conv encoder (`nn.conv`) -> 1x1 quant conv -> p [B, g*g, Dp]
  -> `dual.quantize(s, p)`: i* = argmin w_sem ||s - e_sem||^2 + w_pix ||p - e_pix||^2 (l2-normalised)
  -> tokens int32 [B, g*g] (row-major grid); or, with `scales` (the release's setting), the
     multi-scale residual quantization of `quantizers.multiscale`: tokens int32 [B, sum s^2], one
     shared index per cell of every scale, and the codes summed over the scales at g x g
  decoders, both from the same tokens:
   pixel:    e_pix[i*] -> 1x1 post-quant conv -> VQGAN conv decoder -> images [B, S, S, 3]
   semantic: e_sem[i*] -> Dense -> + positions -> transformer (shared Blocks) -> LayerNorm -> task
             layer -> features [B, g*g, Wt], trained towards the frozen SigLIP features with the
             cosine loss of VQKD (BEiT-v2), the semantic teacher recipe TokenFlow builds on:
             semantic = semantic_loss_weight * mean(1 - cos(rec, target)).

The trainer adds the pixel losses from `TrainOutput.recon`; `losses` holds the quantizer's
(codebook, commitment) and the semantic term.

The frozen tower. Its parameters live in the model under `siglip/` (so the Tokenizer's functions
stay pure functions of one parameter tree) but never learn: its outputs are stop-gradient'ed (no
gradient, so Adam's update is exactly 0) and the optimizer's no-decay patterns include `^siglip/`.
Without a weights file it is a random tower (the tiny config: the mechanics, not the semantics); with
released weights call `with_siglip(params, path, config)` on the initialised parameters
(`convert.siglip`; google/siglip-so400m-patch14-384 is the official teacher). `tools/train.py` does
not do that by itself.

Multi-scale (`scales`, e.g. the SigLIP-384 release's 1, 2, 3, ..., 22, 27): each scale quantizes the
area-downsampled residual with the same shared-mapping codebooks and its codes, bicubic-upsampled,
are summed and subtracted (`quantizers.multiscale`, torch's resize kernels as matrices); in
training one scale (not the first) is skipped with probability `scale_drop` (the release's 0.1).
`scales=None` quantizes the single g x g grid once.

Differences from the release (documented, not hidden): the release fine-tunes the semantic encoder
(all SigLIP blocks but the last); here the tower is frozen and only the task layer learns. For the
384 px SigLIP teacher the release resizes the image to 16 * 27 px for the pixel encoder; here the two
grids must agree (S / patch == S / f).

Dimension names: B batch, S image size, g grid side, T tokens (g*g, or sum s^2 over scales), Wt
tower width, Ds / Dp code dims, K codebook.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtok.nn import conv as conv_lib
from jaxtok.nn import siglip as siglip_lib
from jaxtok.nn.block import Block
from jaxtok.nn.dense import Dense
from jaxtok.nn.embeddings import trunc_normal
from jaxtok.nn.norm import Norm
from jaxtok.nn.options import model_kwargs
from jaxtok.nn.stack import Stack
from jaxtok.quantizers import dual
from jaxtok.quantizers import multiscale
from jaxtok.sharding import logical_init
from jaxtok.tokenizers.bottleneck import symmetric_uniform
from jaxtok.tokenizers.api import (EncodeOutput, TrainOutput, as_dict, check_images,
                                   check_num_tokens, check_target, compute_dtype)

sg = jax.lax.stop_gradient


def cosine_loss(features: jax.Array, targets: jax.Array, eps: float = 1e-12) -> jax.Array:
  """mean over all positions of 1 - cos(features, targets) in float32: [..., D] each (VQKD's
  semantic reconstruction loss; 0 when aligned, up to 2)."""
  f = features.astype(jnp.float32)
  t = targets.astype(jnp.float32)
  f = f / jnp.maximum(jnp.linalg.norm(f, axis=-1, keepdims=True), eps)
  t = t / jnp.maximum(jnp.linalg.norm(t, axis=-1, keepdims=True), eps)
  return jnp.mean(1.0 - jnp.sum(f * t, axis=-1))


class TaskLayer(nnx.Module):
  """VQKD's task layer: Dense(I -> I), tanh, Dense(I -> O): [..., I] -> [..., O]."""

  def __init__(self, width: int, out: int, *, dtype=jnp.float32, rngs: nnx.Rngs):
    self.fc1 = Dense(width, width, ("embed", "mlp"), dtype=dtype, rngs=rngs)
    self.fc2 = Dense(width, out, ("mlp", "embed"), dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.fc2(jnp.tanh(self.fc1(x)))


class SemanticDecoder(nnx.Module):
  """codes [B, N, D] -> features [B, N, O]: Dense(D -> W) + learned positions, `depth` pre-norm
  Blocks, LayerNorm, task layer (VQKD's / TokenFlow's `decoder_vqkd` + `decode_task_layer`)."""

  def __init__(self, code_dim: int, out: int, num_tokens: int, *, width: int, depth: int,
               num_heads: int, dtype=jnp.float32, remat: Any = "none", scan_layers: bool = False,
               attention_impl=None, rngs: nnx.Rngs):
    self.proj = Dense(code_dim, width, (None, "embed"), dtype=dtype, rngs=rngs)
    self.pos_embed = nnx.Param(logical_init(trunc_normal(0.02), None, "embed")(
        rngs.params(), (num_tokens, width), jnp.float32))
    block = lambda r: Block(width, num_heads, mlp_hidden=4 * width, norm_eps=1e-6,
                            implementation=attention_impl, dtype=dtype, rngs=r)
    self.blocks = Stack(depth, block, scan_layers=scan_layers, remat=remat, rngs=rngs)
    self.norm = Norm(width, eps=1e-6, dtype=dtype, rngs=rngs)
    self.head = TaskLayer(width, out, dtype=dtype, rngs=rngs)

  def __call__(self, codes: jax.Array) -> jax.Array:
    x = self.proj(codes) + self.pos_embed.get_value().astype(codes.dtype)
    return self.head(self.norm(self.blocks(x))).astype(jnp.float32)


def siglip_tower(siglip: Mapping[str, Any] | None, dtype, *, rngs: nnx.Rngs) -> siglip_lib.SigLIPVision:
  """A SigLIP tower of a semantic tokenizer from its `siglip` config mapping (nn.siglip fields or
  `size`; the MAP head is never built: no tokenizer reads the pooled output)."""
  if siglip is None or not isinstance(siglip, Mapping):
    raise ValueError(f"siglip must be a mapping of nn.siglip fields (width, depth, num_heads, "
                     f"mlp_hidden, patch_size, image_size, or size), got {siglip!r}")
  return siglip_lib.make_model({**dict(siglip), "head": False, "dtype": dtype}, rngs=rngs)


def with_siglip(params: nnx.State, path: str, siglip: Mapping[str, Any], *,
                prefix: str = "vision_model.", into: tuple[str, ...] = ("siglip",)) -> nnx.State:
  """`params` of a TokenFlow / DualToken with the subtrees named in `into` (the frozen `siglip`;
  DualToken also its trainable `encoder`) replaced by the tower in the HF weights file `path`
  (`convert.siglip`, checked against the model's `siglip` config: a file of another shape is refused
  naming the tensors). The file's MAP head, if any, is dropped."""
  from jaxtok.convert import common  # pylint: disable=g-import-not-at-top
  from jaxtok.convert import siglip as convert_siglip  # pylint: disable=g-import-not-at-top
  cfg = {**dict(siglip), "head": False}
  if "size" in cfg:
    cfg = {**siglip_lib.config_for(cfg.pop("size")), **cfg}
  flat = {k: v for k, v in convert_siglip.read(path, prefix=prefix).items()
          if not k.startswith("head.")}
  loaded = common.fill_state(siglip_lib.abstract_params(cfg),
                             convert_siglip.convert(flat, int(cfg["num_heads"])), source=str(path))
  out = jax.tree.map(lambda x: x, params)
  for name in into:
    if name not in out:
      raise ValueError(f"into names {name!r}, which these params do not have")
    out[name] = jax.tree.map(lambda x: x, loaded)
  return out


class TokenFlow(nnx.Module):
  """TokenFlow: images [B, S, S, 3] -> tokens int32 [B, T] -> images (and semantic features)."""

  def __init__(self, *, image_size: int = 256, siglip: dict | None = None, siglip_layer: int = -2,
               codebook_size: int = 16384, semantic_dim: int = 32, pixel_dim: int = 8,
               ch: int = 128, ch_mult: Sequence[int] = (1, 1, 2, 2, 4), num_res_blocks: int = 2,
               z_channels: int = 256, num_groups: int = 32, decoder_width: int = 768,
               decoder_depth: int = 3, decoder_heads: int = 12, semantic_weight: float = 1.0,
               pixel_weight: float = 1.0, commitment_cost: float = 0.25,
               semantic_loss_weight: float = 1.0, l2_norm: bool = True,
               scales: Sequence[int] | None = None, scale_drop: float = 0.1, dtype: Any = jnp.float32,
               remat: Any = "none", scan_layers: bool = False, attention_impl: str | None = None,
               rngs: nnx.Rngs):
    dtype = compute_dtype(dtype)
    self.siglip = siglip_tower(siglip, dtype, rngs=rngs)
    self.siglip_layer = self.siglip.check_layer(siglip_layer)
    if self.siglip.image_size != image_size:
      raise ValueError(f"siglip image_size ({self.siglip.image_size}) must equal image_size "
                       f"({image_size})")
    f = 2**(len(ch_mult) - 1)
    self.grid = image_size // self.siglip.patch_size
    if image_size % f or image_size // f != self.grid:
      raise ValueError(f"the pixel encoder's grid image_size / 2**(len(ch_mult)-1) = {image_size} / "
                       f"{f} must equal SigLIP's grid image_size // patch_size = {self.grid}")
    for name, v in (("semantic_weight", semantic_weight), ("pixel_weight", pixel_weight),
                    ("commitment_cost", commitment_cost),
                    ("semantic_loss_weight", semantic_loss_weight)):
      if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
        raise ValueError(f"TokenFlow {name} must be a number >= 0, got {v!r}")
    self.image_size, self.codebook_size = image_size, codebook_size
    self.scales = None if scales is None else multiscale.check_scales(scales, self.grid)
    if not isinstance(scale_drop, (int, float)) or isinstance(scale_drop, bool) or not (
        0.0 <= scale_drop <= 1.0):
      raise ValueError(f"TokenFlow scale_drop must be a number in [0, 1], got {scale_drop!r}")
    self.scale_drop = float(scale_drop)
    self.num_latent_tokens = (self.grid**2 if self.scales is None
                              else multiscale.num_tokens(self.scales))
    self.weights = (float(semantic_weight), float(pixel_weight))
    self.commitment_cost, self.semantic_loss_weight = float(commitment_cost), float(semantic_loss_weight)
    self.l2_norm = bool(l2_norm)
    tower_width = self.siglip.width
    self.semantic_in = TaskLayer(tower_width, semantic_dim, dtype=dtype, rngs=rngs)
    self.encoder = conv_lib.Encoder(ch=ch, ch_mult=ch_mult, num_res_blocks=num_res_blocks,
                                    z_channels=z_channels, num_groups=num_groups, dtype=dtype,
                                    rngs=rngs)
    self.quant_conv = Dense(z_channels, pixel_dim, ("embed", None), dtype=dtype, rngs=rngs)
    # uniform(-1/K, 1/K) as the release (then l2-normalised wherever they are used).
    book = lambda d: nnx.Param(logical_init(symmetric_uniform(1.0 / codebook_size), "codebook", None)(
        rngs.params(), (codebook_size, d), jnp.float32))
    self.semantic_codebook = book(semantic_dim)
    self.pixel_codebook = book(pixel_dim)
    self.post_quant_conv = Dense(pixel_dim, z_channels, (None, "embed"), dtype=dtype, rngs=rngs)
    self.decoder = conv_lib.Decoder(ch=ch, ch_mult=ch_mult, num_res_blocks=num_res_blocks,
                                    z_channels=z_channels, num_groups=num_groups, dtype=dtype,
                                    rngs=rngs)
    self.semantic_decoder = SemanticDecoder(
        semantic_dim, tower_width, self.grid**2, width=decoder_width, depth=decoder_depth,
        num_heads=decoder_heads, dtype=dtype, remat=remat, scan_layers=scan_layers,
        attention_impl=attention_impl, rngs=rngs)

  # ---- pieces

  def teacher_features(self, images: jax.Array) -> jax.Array:
    """Frozen SigLIP hidden_states[siglip_layer]: [B, g*g, Wt] float32, stop-gradient'ed."""
    k = self.siglip_layer
    return sg(self.siglip(images, layers=(k,))[f"hidden_states_{k}"])

  def _quantize(self, images: jax.Array, drop: jax.Array | int = -1):
    """(teacher features, semantic codes [B, g*g, Ds], pixel codes [B, g*g, Dp], tokens [B, T],
    token codes [B, T, Ds + Dp], losses, metrics) of images; `drop`: the multi-scale drop index."""
    target = self.teacher_features(images)
    s = self.semantic_in(target).astype(jnp.float32)
    z = self.encoder(images)
    p = self.quant_conv(z.reshape(z.shape[0], -1, z.shape[-1])).astype(jnp.float32)
    books = (self.semantic_codebook.get_value(), self.pixel_codebook.get_value())
    kw = dict(semantic_weight=self.weights[0], pixel_weight=self.weights[1],
              beta=self.commitment_cost, l2_norm=self.l2_norm)
    if self.scales is None:
      out = dual.quantize(s, p, *books, **kw)
      codes = jnp.concatenate([out.semantic, out.pixel], -1)
      return target, out.semantic, out.pixel, out.indices, codes, out.losses, out.metrics
    b, g = s.shape[0], self.grid
    out = multiscale.quantize(s.reshape(b, g, g, -1), p.reshape(b, g, g, -1), *books, self.scales,
                              drop=drop, **kw)
    return (target, out.semantic.reshape(b, g * g, -1), out.pixel.reshape(b, g * g, -1),
            out.indices, out.codes, out.losses, out.metrics)

  def decode_pixel_codes(self, codes: jax.Array) -> jax.Array:
    """Pixel codes [B, g*g, Dp] -> images [B, S, S, 3] float32."""
    z = self.post_quant_conv(codes).reshape(codes.shape[0], self.grid, self.grid, -1)
    return self.decoder(z).astype(jnp.float32)

  def _codes(self, tokens: jax.Array):
    """(semantic [B, g*g, Ds], pixel [B, g*g, Dp]) codes of tokens [B, T] (summed over the scales)."""
    if tokens.ndim != 2 or tokens.shape[1] != self.num_latent_tokens:
      raise ValueError(f"tokens must have shape [B, {self.num_latent_tokens}] (all tokens), got "
                       f"{tuple(tokens.shape)}")
    books = (self.semantic_codebook.get_value(), self.pixel_codebook.get_value())
    if self.scales is None:
      return dual.indices_to_codes(tokens, *books, l2_norm=self.l2_norm)
    s, p = multiscale.indices_to_grid(tokens, *books, self.scales, l2_norm=self.l2_norm)
    b = tokens.shape[0]
    return s.reshape(b, self.grid**2, -1), p.reshape(b, self.grid**2, -1)

  # ---- the tokenizer contract

  def encode(self, images: jax.Array, *, num_tokens: int | None = None,
             rng: jax.Array | None = None, train: bool = False) -> EncodeOutput:
    """images [B, S, S, 3] in [0, 1] -> tokens int32 [B, T], codes [B, T, Ds + Dp] (semantic then
    pixel code of each token). num_tokens: None or T (all tokens)."""
    del rng, train
    check_images(images, self.image_size)
    self._check_full_grid(num_tokens)
    _, _, _, tokens, codes, losses, metrics = self._quantize(images)
    return EncodeOutput(tokens, codes, losses, metrics)

  def _check_full_grid(self, num_tokens):
    num_tokens = check_num_tokens(num_tokens, self.num_latent_tokens)
    if num_tokens not in (None, self.num_latent_tokens):
      raise ValueError(f"num_tokens must be None or {self.num_latent_tokens} (all of TokenFlow's "
                       f"tokens), got {num_tokens}")

  def decode(self, tokens: jax.Array, *, rng: jax.Array | None = None,
             train: bool = False) -> jax.Array:
    """tokens int32 [B, T] -> images [B, S, S, 3] float32 (through the pixel codes)."""
    del rng, train
    return self.decode_pixel_codes(self._codes(tokens)[1])

  def decode_semantic(self, tokens: jax.Array) -> jax.Array:
    """tokens int32 [B, T] -> reconstructed SigLIP features [B, g*g, Wt] float32 (through the
    semantic codes of the same indices)."""
    return self.semantic_decoder(self._codes(tokens)[0])

  def train_forward(self, images: jax.Array, *, rng: jax.Array, step: int | jax.Array | None = None,
                    target: str = "pixels", perturb: dict | None = None,
                    num_tokens: int | None = None) -> TrainOutput:
    """Training pass: recon [B, S, S, 3]; losses {codebook, commitment, semantic}; metrics of the
    quantizer plus `semantic_cosine` (mean cos to the teacher). No proxy head, no perturbation.
    With scales, rng draws the random scale drop (`scale_drop`)."""
    del step
    check_target(target, proxy_head=False, model="TokenFlow")
    if perturb is not None:
      raise ValueError("TokenFlow does not implement RobusTok perturbation (loss.perturb); got "
                       f"{perturb!r}")
    self._check_full_grid(num_tokens)
    check_images(images, self.image_size)
    drop = -1 if self.scales is None else multiscale.drop_index(rng, len(self.scales),
                                                                 self.scale_drop)
    teacher, semantic, pixel, _, _, q_losses, q_metrics = self._quantize(images, drop)
    features = self.semantic_decoder(semantic)
    sem = cosine_loss(features, teacher)
    losses = dict(q_losses, semantic=self.semantic_loss_weight * sem)
    metrics = dict(q_metrics, semantic_cosine=1.0 - sem)
    return TrainOutput(self.decode_pixel_codes(pixel), losses, metrics)


_FIELDS = ("image_size", "siglip", "siglip_layer", "codebook_size", "semantic_dim", "pixel_dim", "ch",
           "ch_mult", "num_res_blocks", "z_channels", "num_groups", "decoder_width", "decoder_depth",
           "decoder_heads", "semantic_weight", "pixel_weight", "commitment_cost",
           "semantic_loss_weight", "l2_norm", "scales", "scale_drop")


def make_model(cfg: Mapping[str, Any], *, rngs: nnx.Rngs) -> TokenFlow:
  """A TokenFlow from _FIELDS and the common options; an unknown key raises ValueError."""
  kwargs = model_kwargs(as_dict(cfg), _FIELDS, model="TokenFlow", cls=TokenFlow)
  if "ch_mult" in kwargs:
    kwargs["ch_mult"] = tuple(int(v) for v in kwargs["ch_mult"])
  if "scales" in kwargs:
    kwargs["scales"] = tuple(kwargs["scales"])
  if "siglip" in kwargs:
    kwargs["siglip"] = dict(kwargs["siglip"])
  return TokenFlow(**kwargs, rngs=rngs)
