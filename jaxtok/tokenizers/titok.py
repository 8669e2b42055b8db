"""TiTok: a 1D image tokenizer (arXiv 2406.07550), with One-D-Piece tail-token drop as an option.

Encoder (ViT): sequence [cls, patches (G), latents (K)] with learned class/positional embeddings
(the latent tokens and their positions are learned too), ln_pre, pre-LN blocks, ln_post on the K
latents, then a per-token projection W -> D (2D for the "vae" bottleneck). `legacy_reshape=True`
reproduces the released TiTok-S/B/L and One-D-Piece checkpoints, which reshape the [B, K, W] latents
row-major as [B, W, K] (no transpose) before that projection; False is the corrected path.

Bottleneck (`quantizer`): any discrete kind of `bottleneck.py` (vq | fsq | lfq | bsq | rvq | rfsq |
binary, with `quantizer_options`), or "vae" (diagonal Gaussian, see `vae.py`). "vq" is a learned
codebook [C, D] (the `codebook` parameter) looked up l2-normalised when `use_l2_norm`, commitment
`commitment_cost` + codebook loss, trained by gradient unless quantizer_options["ema"]; "fsq" takes
`fsq_levels`. Tokens are int32 [B, K] (rvq/rfsq: [B, K, Q] ids per level; binary with token_size > 31:
[B, K, token_size] bits), see `bottleneck.py`; `codebook_size` is then the number of ids per entry.

Decoder (ViT): decoder_embed D -> W plus latent positions[:K'], sequence [cls, mask x G, latents (K')],
ln_pre, blocks, ln_post on the G mask positions, then a head:
  "pixels" (single-stage): per position W -> p*p*3, depth-to-space, 3x3 conv -> RGB.
  "proxy_codes" (legacy two-stage): W -> 2W, tanh, 2W -> P logits over a 2D proxy codebook (the
  MaskGIT VQGAN's 1024 codes); pixels come from the VQGAN decoder applied to the soft codes
  softmax(logits) @ pixel_codebook (`vqgan.codes_to_pixels`). `decode_logits` exposes the logits for
  stage-1 training (cross-entropy against the VQGAN's codes).

One-D-Piece (`tail_drop=True`, config name "onedpiece"): `train_forward` keeps one prefix length
n ~ U{1..K} per batch. Instead of cutting the sequence (a new shape per n) the decoder masks the
latent keys at positions >= n in every attention layer; the kept outputs (the G mask positions) are
then exactly those of the physically truncated sequence, because the dropped latents are never
attended to and everything else is per-token. So `decode(tokens[:, :k])` == `decode(tokens,
num_tokens=k)`; both work at inference for any k in [1, K] (the first recompiles per k, the second
traces once).

Images are float32 [B, H, W, 3] in [0, 1] and used as is (no mean/std normalisation), as in the
reference. Parameters are float32; `dtype` is the compute dtype; quantizer math is float32.

Dimension names: B batch, H/W image size, p patch size, G = (H/p)^2 grid positions, K latent tokens,
K' kept tokens, W width, D token dimension, C codebook size, P proxy codebook size.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtok.losses import repa as repa_lib
from jaxtok.nn import conv as conv_lib
from jaxtok.nn.dense import Dense
from jaxtok.nn.embeddings import LearnedEmbedding, scaled_normal, trunc_normal
from jaxtok.nn.norm import Norm
from jaxtok.nn.options import check_types, model_kwargs
from jaxtok.nn.vit import PatchEmbed, unpatchify, vit_size, vit_stack
from jaxtok.sharding import logical_init
from jaxtok.tokenizers import bottleneck as bottleneck_lib
from jaxtok.tokenizers import prefix
from jaxtok.tokenizers import vae as vae_lib
from jaxtok.tokenizers import vqgan as vqgan_lib
from jaxtok.tokenizers.api import (EncodeOutput, TrainOutput, as_dict, check_images,
                                   check_num_tokens, check_target, compute_dtype)

QUANTIZERS = bottleneck_lib.KINDS + ("vae",)
HEADS = ("pixels", "proxy_codes")


class TiTokEncoder(nnx.Module):
  """Images [B, H, W, 3] and latent tokens [K, W] -> latents [B, K, D_out] float32."""

  def __init__(self, *, image_size, patch_size, width, depth, num_heads, num_latent_tokens,
               out_dim, legacy_reshape, dtype, stack, rngs):
    self.grid = image_size // patch_size
    self.width, self.num_latent_tokens, self.legacy_reshape = width, num_latent_tokens, legacy_reshape
    self.dtype = dtype
    self.patch_embed = PatchEmbed(patch_size, width, dtype=dtype, rngs=rngs)
    self.class_embedding = LearnedEmbedding(1, width, rngs=rngs)
    self.positional_embedding = LearnedEmbedding(self.grid**2 + 1, width, rngs=rngs)
    self.latent_token_positional_embedding = LearnedEmbedding(num_latent_tokens, width, rngs=rngs)
    self.ln_pre = Norm(width, dtype=dtype, rngs=rngs)
    self.transformer = vit_stack(width, depth, num_heads, dtype=dtype, rngs=rngs, **stack)
    self.ln_post = Norm(width, dtype=dtype, rngs=rngs)
    self.conv_out = Dense(width, out_dim, ("embed", None), dtype=dtype, rngs=rngs)

  def __call__(self, images: jax.Array, latent_tokens: jax.Array) -> jax.Array:
    b = images.shape[0]
    x = self.patch_embed(images)
    cls = jnp.broadcast_to(self.class_embedding().astype(x.dtype), (b, 1, self.width))
    x = jnp.concatenate([cls, x], axis=1) + self.positional_embedding().astype(x.dtype)
    lat = latent_tokens + self.latent_token_positional_embedding()
    lat = jnp.broadcast_to(lat.astype(x.dtype), (b,) + lat.shape)
    x = self.ln_pre(jnp.concatenate([x, lat], axis=1))
    x = self.transformer(x)
    lat = self.ln_post(x[:, 1 + self.grid**2:])
    if self.legacy_reshape:
      # The released checkpoints reshape [B, K, W] as [B, W, K] (channels W, positions K) without a
      # transpose before the 1x1 conv; in channels-last that is this raw reshape then a transpose.
      lat = lat.reshape(b, self.width, self.num_latent_tokens).transpose(0, 2, 1)
    return self.conv_out(lat).astype(jnp.float32)


class TiTokDecoder(nnx.Module):
  """Codes [B, K', D] -> head outputs on the grid: pixels [B, H, W, 3] or proxy logits [B, g, g, P]."""

  def __init__(self, *, image_size, patch_size, width, depth, num_heads, num_latent_tokens,
               token_size, head, proxy_codebook_size, dtype, stack, rngs):
    self.grid, self.patch, self.width = image_size // patch_size, patch_size, width
    self.num_latent_tokens, self.head, self.dtype = num_latent_tokens, head, dtype
    self.decoder_embed = Dense(token_size, width, (None, "embed"), dtype=dtype, rngs=rngs)
    self.class_embedding = LearnedEmbedding(1, width, rngs=rngs)
    self.positional_embedding = LearnedEmbedding(self.grid**2 + 1, width, rngs=rngs)
    self.mask_token = LearnedEmbedding(1, width, rngs=rngs)
    self.latent_token_positional_embedding = LearnedEmbedding(num_latent_tokens, width, rngs=rngs)
    self.ln_pre = Norm(width, dtype=dtype, rngs=rngs)
    self.transformer = vit_stack(width, depth, num_heads, dtype=dtype, rngs=rngs, **stack)
    self.ln_post = Norm(width, dtype=dtype, rngs=rngs)
    if head == "pixels":
      self.ffn = Dense(width, patch_size * patch_size * 3, ("embed", None), dtype=dtype, rngs=rngs)
      self.conv_out = conv_lib.Conv(3, 3, 3, dtype=dtype, kernel_init=trunc_normal(0.02), rngs=rngs)
    else:
      self.ffn = Dense(width, 2 * width, ("embed", "mlp"), dtype=dtype, rngs=rngs)
      self.ffn_out = Dense(2 * width, proxy_codebook_size, ("mlp", "vocab"), dtype=dtype, rngs=rngs)

  def __call__(self, codes: jax.Array, num_tokens: int | jax.Array | None = None,
               capture: int | None = None, context: jax.Array | None = None):
    """The head's output; with capture=k also the G grid tokens [B, G, W] after block k.

    context: optional [B, S, W] tokens appended after the latents (TA-TiTok's projected text), seen
      by every position and never masked by num_tokens.
    """
    b, k, _ = codes.shape
    g2 = self.grid**2
    x = self.decoder_embed(codes) + self.latent_token_positional_embedding(k).astype(self.dtype)
    masks = jnp.broadcast_to(self.mask_token().astype(self.dtype), (b, g2, self.width))
    cls = jnp.broadcast_to(self.class_embedding().astype(self.dtype), (b, 1, self.width))
    prefix = jnp.concatenate([cls, masks], axis=1) + self.positional_embedding().astype(self.dtype)
    parts = [prefix, x] + ([] if context is None else [context.astype(self.dtype)])
    seq = self.ln_pre(jnp.concatenate(parts, axis=1))
    mask = None
    if num_tokens is not None:
      n = jnp.asarray(num_tokens, jnp.int32).reshape(-1)  # [] or [B]
      keep_latent = jnp.arange(k)[None, :] < n[:, None]  # [1 or B, K']
      rows = keep_latent.shape[0]
      keep = jnp.concatenate(
          [jnp.ones((rows, 1 + g2), bool), keep_latent] +
          ([] if context is None else [jnp.ones((rows, context.shape[1]), bool)]), axis=1)
      mask = keep[:, None, None, :]  # keys only: [B, 1, 1, S]
    hidden = None
    if capture is None:
      seq = self.transformer(seq, mask=mask)
    else:
      seq, hidden = self.transformer(seq, mask=mask, capture=capture)
      hidden = hidden[:, 1:1 + g2]
    x = self.ln_post(seq[:, 1:1 + g2])
    if self.head == "pixels":
      x = unpatchify(self.ffn(x), self.patch, self.grid, self.grid)
      out = self.conv_out(x).astype(jnp.float32)
    else:
      out = self.ffn_out(jnp.tanh(self.ffn(x))).astype(jnp.float32).reshape(b, self.grid, self.grid, -1)
    return out if capture is None else (out, hidden)


class TiTok(nnx.Module):
  """TiTok / One-D-Piece / TiTok-VAE tokenizer (see the module docstring)."""

  def __init__(self, *, image_size: int = 256, patch_size: int = 16,
               encoder_width: int = 512, encoder_depth: int = 8, encoder_heads: int = 8,
               decoder_width: int = 512, decoder_depth: int = 8, decoder_heads: int = 8,
               num_latent_tokens: int = 128, token_size: int = 12, quantizer: str = "vq",
               codebook_size: int = 4096, use_l2_norm: bool = True, commitment_cost: float = 0.25,
               fsq_levels: Sequence[int] = (), quantizer_options: dict | None = None,
               kl_weight: float = 1e-6, vae_inference: str = "mode",
               legacy_reshape: bool = False, decoder_head: str = "pixels",
               proxy_codebook_size: int = 1024, pixel_ch: int = 128,
               pixel_ch_mult: Sequence[int] = (1, 1, 2, 2, 4), pixel_num_res_blocks: int = 2,
               pixel_z_channels: int = 256, pixel_num_groups: int = 32, tail_drop: bool = False,
               tail_drop_mode: str = "uniform", dtype: Any = jnp.float32, remat: Any = "none", scan_layers: bool = False,
               attention_impl: str | None = None, repa_layer: int = 0, repa_hidden: int = 2048,
               repa_dim: int = 768, rngs: nnx.Rngs):
    if image_size % patch_size:
      raise ValueError(f"image_size ({image_size}) must be divisible by patch_size ({patch_size})")
    if quantizer not in QUANTIZERS:
      raise ValueError(f"quantizer must be one of {QUANTIZERS}, got {quantizer!r}")
    if decoder_head not in HEADS:
      raise ValueError(f"decoder_head must be one of {HEADS}, got {decoder_head!r}")
    if vae_inference not in ("mode", "sample"):
      raise ValueError(f"vae_inference must be 'mode' or 'sample', got {vae_inference!r}")
    self.bottleneck = None
    if quantizer != "vae":
      self.bottleneck = bottleneck_lib.Bottleneck.create(
          quantizer, token_size, codebook_size=codebook_size, levels=fsq_levels,
          cosine=use_l2_norm, commitment_cost=commitment_cost, options=quantizer_options)
      codebook_size = self.bottleneck.codebook_size
    elif quantizer_options:
      raise ValueError(f"quantizer_options apply to discrete quantizers, got {quantizer_options!r} "
                       f"with quantizer 'vae'")
    if decoder_head == "proxy_codes" and 2**(len(pixel_ch_mult) - 1) != patch_size:
      raise ValueError(f"the pixel decoder upsamples by 2**(len(pixel_ch_mult)-1) = "
                       f"{2**(len(pixel_ch_mult) - 1)}, which must equal patch_size ({patch_size})")
    prefix.check_mode(tail_drop_mode, num_latent_tokens, name="tail_drop_mode",
                      count="num_latent_tokens")
    dtype = compute_dtype(dtype)
    stack = dict(remat=remat, scan_layers=scan_layers, attention_impl=attention_impl)
    self.tail_drop_mode = tail_drop_mode
    self.image_size, self.patch_size, self.num_latent_tokens = image_size, patch_size, num_latent_tokens
    self.token_size, self.quantizer, self.codebook_size = token_size, quantizer, codebook_size
    self.use_l2_norm, self.commitment_cost = use_l2_norm, float(commitment_cost)
    self.fsq_levels, self.kl_weight, self.vae_inference = tuple(fsq_levels), float(kl_weight), vae_inference
    self.decoder_head, self.tail_drop, self.dtype = decoder_head, tail_drop, dtype
    self.encoder = TiTokEncoder(
        image_size=image_size, patch_size=patch_size, width=encoder_width, depth=encoder_depth,
        num_heads=encoder_heads, num_latent_tokens=num_latent_tokens,
        out_dim=2 * token_size if quantizer == "vae" else token_size,
        legacy_reshape=legacy_reshape, dtype=dtype, stack=stack, rngs=rngs)
    self.latent_tokens = nnx.Param(logical_init(scaled_normal(encoder_width), None, "embed")(
        rngs.params(), (num_latent_tokens, encoder_width), jnp.float32))
    if self.bottleneck is not None:
      # The codebook (vq, rvq) and EMA statistics sit on the model itself: `codebook` is the name of
      # the released checkpoints' parameter.
      for name, var in self.bottleneck.make_variables(rngs).items():
        setattr(self, name, var)
    self.decoder = TiTokDecoder(
        image_size=image_size, patch_size=patch_size, width=decoder_width, depth=decoder_depth,
        num_heads=decoder_heads, num_latent_tokens=num_latent_tokens, token_size=token_size,
        head=decoder_head, proxy_codebook_size=proxy_codebook_size, dtype=dtype, stack=stack,
        rngs=rngs)
    # GigaTok's semantic regularisation (`losses.repa`): the decoder's grid tokens after block
    # repa_layer (GigaTok: distill_depth 3) -> MLP projector -> cosine to DINOv2-B (repa_dim 768).
    repa_lib.check_model_fields(repa_layer, decoder_depth, repa_hidden, repa_dim, model="TiTok")
    self.repa_layer = repa_layer
    self.repa_proj = repa_lib.Projector(decoder_width, repa_hidden, repa_dim, dtype=dtype,
                                        rngs=rngs) if repa_layer else None
    if decoder_head == "proxy_codes":
      self.pixel_codebook = nnx.Param(logical_init(
          bottleneck_lib.symmetric_uniform(1.0 / proxy_codebook_size), "codebook", None)(
              rngs.params(), (proxy_codebook_size, pixel_z_channels), jnp.float32))
      self.pixel_decoder = conv_lib.Decoder(
          ch=pixel_ch, ch_mult=pixel_ch_mult, num_res_blocks=pixel_num_res_blocks,
          z_channels=pixel_z_channels, num_groups=pixel_num_groups, dtype=dtype, rngs=rngs)

  # ---- bottleneck

  def tokens_to_codes(self, tokens: jax.Array) -> jax.Array:
    """Tokens int32 [B, K', *token_shape] (discrete) or float [B, K', D] (vae) -> codes [B, K', D]."""
    if self.bottleneck is not None:
      return self.bottleneck.indices_to_codes(bottleneck_lib.read(self, self.bottleneck), tokens)
    return tokens.astype(jnp.float32)

  def _bottleneck(self, z, rng, train, update=False):
    """Quantizes z [B, K, D]; with `update` (train_forward) also writes the VQ state updates."""
    if self.bottleneck is not None:
      values = bottleneck_lib.read(self, self.bottleneck)
      if not update:
        return self.bottleneck.quantize(values, z, rng=rng, train=train)
      *out, new_values = self.bottleneck.train_quantize(values, z, rng)
      bottleneck_lib.write(self, new_values)
      return tuple(out)
    mean, logvar = vae_lib.split_moments(z)
    kl = jnp.mean(vae_lib.kl_divergence(mean, logvar))
    if train or self.vae_inference == "sample":
      if rng is None:
        raise ValueError("rng is required to sample the VAE posterior (train=True or "
                         "vae_inference='sample'), got None")
      codes = vae_lib.sample(mean, logvar, rng)
    else:
      codes = mean
    metrics = {"kl": kl, "posterior_std": jnp.mean(jnp.exp(0.5 * logvar)),
               "posterior_mean_abs": jnp.mean(jnp.abs(mean))}
    return codes, codes, {"kl": self.kl_weight * kl}, metrics

  # ---- contract

  def encode(self, images: jax.Array, *, num_tokens: int | None = None,
             rng: jax.Array | None = None, train: bool = False) -> EncodeOutput:
    """images float [B, H, W, 3] in [0, 1] -> EncodeOutput over the first K' = num_tokens tokens.

    Losses (already weighted) and metrics are computed over all K tokens.
    """
    check_images(images, self.image_size)
    num_tokens = check_num_tokens(num_tokens, self.num_latent_tokens)
    z = self.encoder(images, self.latent_tokens.get_value())
    tokens, codes, losses, metrics = self._bottleneck(z, rng, train)
    if num_tokens is not None:
      tokens, codes = tokens[:, :num_tokens], codes[:, :num_tokens]
    return EncodeOutput(tokens=tokens, codes=codes, losses=losses, metrics=metrics)

  def _check_tokens(self, tokens):
    if self.bottleneck is not None:
      self.bottleneck.check_tokens(tokens, self.num_latent_tokens)
      return
    continuous = self.quantizer == "vae"
    rank = 3 if continuous else 2
    if not hasattr(tokens, "shape") or tokens.ndim != rank:
      raise ValueError(f"tokens must have shape {'[B, K, D] float' if continuous else '[B, K] int'}, "
                       f"got {getattr(tokens, 'shape', type(tokens).__name__)}")
    if continuous != bool(jnp.issubdtype(tokens.dtype, jnp.floating)):
      raise TypeError(f"tokens must be {'float' if continuous else 'integer'} for quantizer "
                      f"{self.quantizer!r}, got {tokens.dtype}")
    if not 1 <= tokens.shape[1] <= self.num_latent_tokens:
      raise ValueError(f"tokens must hold between 1 and {self.num_latent_tokens} tokens, got shape "
                       f"{tuple(tokens.shape)}")

  def decode_codes(self, codes: jax.Array, *, num_tokens: int | jax.Array | None = None,
                   logits: bool = False, features: bool = False, context: jax.Array | None = None):
    """Codes [B, K', D] -> images [B, H, W, 3] float32 (or proxy logits [B, g, g, P] with logits=True).

    num_tokens: optional int or int32 array ([] or [B]); latents at positions >= num_tokens are
      masked out of the decoder's attention (tail drop), which equals decoding codes[:, :num_tokens].
    features: also return the REPA-projected grid tokens float32 [B, G, repa_dim] after decoder
      block repa_layer (the pair (output, features)).
    context: optional [B, S, W_dec] tokens the decoder appends after the latents (TA-TiTok).
    """
    if features:
      if self.repa_proj is None:
        raise ValueError("features=True needs a REPA projector: build TiTok with repa_layer > 0")
      out, hidden = self.decoder(codes.astype(jnp.float32), num_tokens, capture=self.repa_layer,
                                 context=context)
      return self._head_output(out, logits), self.repa_proj(hidden)
    return self._head_output(self.decoder(codes.astype(jnp.float32), num_tokens, context=context),
                             logits)

  def _head_output(self, out: jax.Array, logits: bool) -> jax.Array:
    if self.decoder_head == "pixels" or logits:
      return out
    return vqgan_lib.codes_to_pixels(self.pixel_decoder, self.pixel_codebook.get_value(),
                                     jax.nn.softmax(out, axis=-1))

  def decode(self, tokens: jax.Array, *, rng: jax.Array | None = None, train: bool = False,
             num_tokens: int | jax.Array | None = None) -> jax.Array:
    """Tokens int32 [B, K', *token_shape] (or [B, K', D] float for vae), K' <= K -> images
    [B, H, W, 3] float32. Ids outside [0, codebook_size) raise ValueError (when concrete).

    num_tokens: optional; decode only the first num_tokens of the given tokens (masking the rest).
    """
    del rng, train
    self._check_tokens(tokens)
    return self.decode_codes(self.tokens_to_codes(tokens), num_tokens=num_tokens)

  def decode_logits(self, tokens: jax.Array, *, num_tokens: int | jax.Array | None = None) -> jax.Array:
    """Proxy-code logits [B, g, g, P] float32 (decoder_head "proxy_codes"; stage-1 training target)."""
    if self.decoder_head != "proxy_codes":
      raise ValueError(f"decode_logits needs decoder_head='proxy_codes', got {self.decoder_head!r}")
    self._check_tokens(tokens)
    return self.decode_codes(self.tokens_to_codes(tokens), num_tokens=num_tokens, logits=True)

  def kept_length(self, rng: jax.Array, num_tokens: int | None = None) -> jax.Array | int | None:
    """The prefix a training pass decodes: num_tokens if given, else with tail_drop one length per
    batch drawn by `prefix.sample_keep_k` in `tail_drop_mode` (int32 []), else None (all K)."""
    keep = check_num_tokens(num_tokens, self.num_latent_tokens)
    if keep is None and self.tail_drop:
      # One kept length per batch (One-D-Piece); "pow2" draws it from {1, 2, 4, ..., K} (FlexTok's
      # alternative), which trains the long prefixes far more often than uniform's 1/K.
      keep = prefix.sample_keep_k(rng, 1, self.num_latent_tokens, self.tail_drop_mode)[0]
    return keep

  def train_forward(self, images: jax.Array, *, rng: jax.Array, step: int | jax.Array | None = None,
                    target: str = "pixels", perturb: dict | None = None,
                    num_tokens: int | None = None, features: bool = False,
                    resample: Any = None, context: jax.Array | None = None) -> TrainOutput:
    """Training pass: encode (train=True), optionally perturb the codes, decode the kept prefix.

    Args:
      images: float [B, H, W, 3] in [0, 1].
      rng: PRNG key (encoder posterior sample, kept length, perturbation).
      step: the training step (int32 []), read only by an annealed `perturb` schedule.
      target: "pixels" -> recon [B, H, W, 3] float32; "proxy_logits" (decoder_head "proxy_codes",
        TiTok stage 1) -> logits float32 [B, g*g, P] over the proxy codebook, recon None.
      perturb: RobusTok settings (alpha, beta, delta [, anneal_start, anneal_end, end_ratio]):
        after the quantizer's losses, tokens of the first floor(B * beta) images are replaced by
        nearby codes (`quantizers.perturb.apply`: the codebook's nearest for VQ, level-grid
        neighbours for FSQ); metrics perturb/change_rate and perturb/alpha. Only vq and fsq.
      num_tokens: decode this prefix instead of drawing one.
      features: also return TrainOutput.features, the REPA-projected decoder grid tokens
        [B, G, repa_dim] after block repa_layer (GigaTok semantic regularisation; needs repa_layer > 0).
      resample: RobusTok generator-sampled post-training, `resample(tokens int32 [B, K], rng) ->
        (tokens, metrics)` (`jaxtok.train.posttrain`): the decoder gets the codes of the returned
        tokens (an unchanged token keeps its code). Only vq and fsq; not with perturb.
      context: optional [B, S, W_dec] tokens appended to the decoder's sequence (TA-TiTok's text).

    With tail_drop and num_tokens None, one kept length is drawn per batch on every target
    (`kept_length`: U{1..K} for tail_drop_mode "uniform", U{1, 2, 4, ..., K} for "pow2"; metric
    `kept_tokens`) and the tail is masked in the decoder.
    """
    check_target(target, proxy_head=self.decoder_head == "proxy_codes",
                 model=f"this TiTok (decoder_head {self.decoder_head!r})")
    if resample is not None and (perturb is not None or self.quantizer not in ("vq", "fsq")):
      raise ValueError(f"generator-sampled post-training (resample) needs one id per token from "
                       f"quantizer 'vq' or 'fsq' and no perturb; got quantizer {self.quantizer!r}, "
                       f"perturb {'set' if perturb is not None else 'None'}")
    if perturb is not None and self.quantizer not in ("vq", "fsq"):
      raise ValueError(f"RobusTok perturbation needs discrete tokens from quantizer 'vq' or 'fsq' "
                       f"(nearest codes of a codebook or level grid), got quantizer "
                       f"{self.quantizer!r}")
    check_images(images, self.image_size)
    enc_rng, drop_rng = jax.random.split(rng)
    z = self.encoder(images, self.latent_tokens.get_value())
    tokens, codes, losses, metrics = self._bottleneck(z, enc_rng, True, update=True)
    metrics = dict(metrics)
    if perturb is not None:
      # Its own stream: the draws of the unperturbed pass stay those of the plain recipe. With an
      # EMA codebook the neighbours come from the codebook as this step updated it.
      codes, info = self.bottleneck.perturb(bottleneck_lib.read(self, self.bottleneck), perturb, step,
                                            jax.random.fold_in(rng, 1), z, codes, tokens)
      metrics.update(info)
    if resample is not None:
      new, info = resample(tokens, jax.random.fold_in(rng, 2))
      new_codes = self.bottleneck.indices_to_codes(bottleneck_lib.read(self, self.bottleneck), new)
      codes = jnp.where((new == tokens)[..., None], codes, new_codes.astype(codes.dtype))
      metrics.update(info)
    keep = self.kept_length(drop_rng, num_tokens)
    if keep is not None:
      metrics["kept_tokens"] = jnp.asarray(keep, jnp.float32)
    out = self.decode_codes(codes, num_tokens=keep, logits=target == "proxy_logits",
                            features=features, context=context)
    out, feats = out if features else (out, None)
    if target == "proxy_logits":
      return TrainOutput(recon=None, losses=dict(losses), metrics=metrics,
                         logits=out.reshape(out.shape[0], -1, out.shape[-1]), features=feats)
    return TrainOutput(recon=out, losses=dict(losses), metrics=metrics, features=feats)


# ---- configs

def _sizes(cfg: Mapping[str, Any], part: str) -> dict[str, int]:
  size = cfg.get(f"{part}_size")
  width, depth, heads = vit_size(size) if size is not None else (None, None, None)
  out = {}
  for key, default in (("width", width), ("depth", depth), ("heads", heads)):
    value = cfg.get(f"{part}_{key}", default)
    if value is None:
      raise ValueError(f"config needs {part}_size (S, B, L) or {part}_{key}")
    out[f"{part}_{key}"] = int(value)
  return out


_FIELDS = ("image_size", "patch_size", "num_latent_tokens", "token_size", "quantizer",
           "codebook_size", "use_l2_norm", "commitment_cost", "fsq_levels", "quantizer_options",
           "kl_weight",
           "vae_inference", "legacy_reshape", "decoder_head", "proxy_codebook_size", "pixel_ch",
           "pixel_ch_mult", "pixel_num_res_blocks", "pixel_z_channels", "pixel_num_groups",
           "tail_drop", "tail_drop_mode", "repa_layer", "repa_hidden", "repa_dim")
# Keys make_model reads besides _FIELDS and the common options (nn.options.COMMON).
_SIZE_KEYS = ("name",) + tuple(f"{part}_{key}" for part in ("encoder", "decoder")
                               for key in ("size", "width", "depth", "heads"))


def make_model(cfg: Mapping[str, Any], *, rngs: nnx.Rngs) -> TiTok:
  """A TiTok from a config of plain fields.

  Fields: `encoder_size`/`decoder_size` ("S", "B", "L") or explicit `{encoder,decoder}_{width,
  depth,heads}`; the TiTok keyword fields (image_size, patch_size, num_latent_tokens, token_size,
  quantizer, codebook_size, ...). name "onedpiece" sets tail_drop=True; name "vae" sets quantizer
  "vae". Common options: dtype, remat, scan_layers, attention_impl (`nn.options`). Any other key
  raises ValueError listing the valid ones.
  """
  return TiTok(**titok_kwargs(cfg), rngs=rngs)


def titok_kwargs(cfg: Mapping[str, Any], *, fields: Sequence[str] = _FIELDS, cls: type = TiTok,
                 model: str = "TiTok") -> dict[str, Any]:
  """The constructor keywords `make_model` reads from cfg (a model composing TiTok, such as
  TA-TiTok, passes its own extra `fields` and class)."""
  cfg = as_dict(cfg)
  kwargs = model_kwargs(cfg, fields, model=model, extra=_SIZE_KEYS, cls=cls)
  check_types(cls, {k: cfg[k] for k in _SIZE_KEYS if not k.endswith(("_size", "name"))
                    and cfg.get(k) is not None}, model=model)
  kwargs.update(_sizes(cfg, "encoder"))
  kwargs.update(_sizes(cfg, "decoder"))
  if cfg.get("name") == "onedpiece":
    kwargs["tail_drop"] = True
  if cfg.get("name") == "vae":
    kwargs["quantizer"] = "vae"
  for key in ("fsq_levels", "pixel_ch_mult"):
    if key in kwargs:
      kwargs[key] = tuple(int(v) for v in kwargs[key])
  return kwargs
