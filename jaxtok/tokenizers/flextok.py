"""FlexTok (Bachmann et al. 2025, apple/ml-flextok): images to 1..K ordered FSQ tokens, decoded by a
rectified-flow transformer.

  images [0, 1] -> [-1, 1] -> (frozen) VAE latents * scaling_factor -> p x p patches + 2D sin-cos
  -> [patches, K registers] through a transformer whose mask lets register i see all patches and
  registers j <= i (patches see only patches) -> registers -> LN -> Linear(W -> 6) -> FSQ (8,8,8,5,5,5)
  -> tokens [B, K'] int32 (64,000 codes).

  Decoder (rectified flow): codes -> Linear(6 -> W) + learned register positions -> nested dropout
  (registers >= keep_k replaced by one learned mask token) -> condition dropout (all registers replaced
  by one learned null embedding) -> [noisy latent patches + sin-cos, registers] with full attention,
  adaLN-zero blocks driven by the time embedding (patches and registers modulated separately) ->
  LN + adaLN -> Linear -> velocity of the latent patches.

Flow convention (the release's MinRF): x_t = t * noise + (1 - t) * x0, t in (0, 1), t = 1 is pure noise;
the network predicts v = noise - x0 and training minimises mean((v_pred - (noise - x0))^2), with
t = sigmoid(N(0, 1)) (logit-normal). Sampling is `samplers.flow.sample` on the time-flipped field
(`flow.flip_time`): Euler from t = 1 to 0, x <- x - v(x, t) / T at t = i/T for i = T..1 (the release's
MinRF pipeline); guidance (u computed with the null condition) is classifier-free u + s (c - u) or the
release's APG variant (`samplers.guidance`).

The transformers are `nn.Stack`s of `nn.Block`s in the release's FlexBlock form: bias-free fused qkv,
out and SwiGLU projections (hidden int(2 * int(mlp_ratio * W) / 3)), no-affine LayerNorms (eps 1e-5,
float32) before attention and MLP and per head on q and k, the muP score scale 8 / head_dim,
xavier-uniform weights; the decoder's blocks add adaLN-zero with one modulation per segment
(patches, registers). Kept-length sampling (nested dropout) is `tokenizers.prefix`.

Decoding k < K tokens keeps the decoder's K register slots and fills slots >= k with the mask token,
exactly as the release's `detokenize` does (so truncation is what nested dropout trained for).

Dimension names: B batch, H/W image size, h/w latent size, C latent channels, p patch size,
N = (h/p)(w/p) patches, K registers (max tokens), K' kept tokens, D = 6 code dimension, W width.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxtok.losses import repa as repa_lib
from jaxtok.nn import norm as norm_lib
from jaxtok.nn.block import Block
from jaxtok.nn.dense import Dense
from jaxtok.nn.embeddings import sincos_2d, timestep_embedding, xavier_uniform_fused
from jaxtok.nn.options import model_kwargs
from jaxtok.nn.stack import Stack
from jaxtok.nn.vit import patchify, unpatchify
from jaxtok.quantizers import base, fsq
from jaxtok.quantizers import perturb as perturb_lib
from jaxtok.samplers import flow
from jaxtok.sharding import logical_init
from jaxtok.tokenizers import flextok_vae, prefix
from jaxtok.tokenizers import vae as vae_lib
from jaxtok.tokenizers.api import (EncodeOutput, TrainOutput, as_dict, check_images,
                                   check_num_tokens, check_target)

FSQ_LEVELS = (8, 8, 8, 5, 5, 5)
# The release's learned vectors use torch's trunc_normal_(std=0.02), whose bounds are absolute (+-2),
# i.e. about +-100 std: in effect an untruncated normal.
_EMB_INIT = nnx.initializers.normal(0.02)
_XAVIER = nnx.initializers.xavier_uniform()
_ZEROS = nnx.initializers.zeros
_LN_EPS = 1e-5
_TIME_FEATURES = 256  # the release's time-embedding frequency dimension

# The released sizes (width = 64 * depth, head_dim 64, 256 registers, f8 VAE + 2x2 patches at 256px).
# The VAE latent channels / scaling factor of the released checkpoints are not in our notes (the
# release ships c4/c8/c16 VAEs); 16 is assumed here.
CONFIGS: dict[str, dict[str, Any]] = {
    "d12_d12": dict(enc_width=768, enc_depth=12, dec_width=768, dec_depth=12),
    "d18_d18": dict(enc_width=1152, enc_depth=18, dec_width=1152, dec_depth=18),
    "d18_d28": dict(enc_width=1152, enc_depth=18, dec_width=1792, dec_depth=28),
    # Tests and CPU training: pixels patchified directly (no VAE), 16 patches, 8 registers.
    "tiny": dict(image_size=32, use_vae=False, patch_size=8, enc_width=32, enc_depth=2, dec_width=32,
                 dec_depth=2, head_dim=16, num_tokens=8),
}


# ----------------------------------------------------------------------------- pure functions


def swiglu_hidden(width: int, mlp_ratio: float) -> int:
  """The release's SwiGLU hidden size: int(2 * int(width * mlp_ratio) / 3) (3072 for width 1152)."""
  return int(2 * int(width * mlp_ratio) / 3)


def register_mask(num_patches: int, num_registers: int) -> jax.Array:
  """FlexTok's encoder mask ("causal_last"): bool [T, T], T = N + K, True = may attend.

  Patches (positions < N) attend to all patches and to no register; register i (position N + i)
  attends to all patches and to registers j <= i. So the first k registers never see later ones.
  """
  t = num_patches + num_registers
  q = np.arange(t)[:, None]
  k = np.arange(t)[None, :]
  return jnp.asarray((k < num_patches) | ((q >= num_patches) & (k <= q)))


def _layer_norm(x: jax.Array) -> jax.Array:
  """The release's no-affine LayerNorm (eps 1e-5, float32), in x's dtype."""
  return norm_lib.normalize(x, "layer", _LN_EPS).astype(x.dtype)


def flow_targets(x0: jax.Array, noise: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(x_t, v) with x_t = t noise + (1 - t) x0 and v = noise - x0, for t [B] and x0/noise [B, ...]."""
  tb = t.reshape((-1,) + (1,) * (x0.ndim - 1))
  return tb * noise + (1.0 - tb) * x0, noise - x0


# ----------------------------------------------------------------------------- the model


class FlexTok(nnx.Module):
  """FlexTok tokenizer (see the module docstring).

  Args:
    image_size: S, input side length.
    use_vae: encode pixels with `FlexTokVAE` first (the release's setting); False patchifies pixels
      in [-1, 1] directly (tiny configs).
    vae_channels, vae_latent_channels, vae_layers_per_block, vae_norm_groups, vae_mid_attention:
      the VAE's shape (see flextok_vae.FlexTokVAE).
    vae_scaling_factor: latents are multiplied by it after encoding and divided before decoding.
    vae_sample_posterior: encode with a posterior sample (needs rng) instead of the mean.
    patch_size: p, patch side on the latent grid (2 in the release).
    enc_width, enc_depth, dec_width, dec_depth, head_dim, mlp_ratio: transformer shapes.
    num_tokens: K, registers (256 in the release).
    fsq_levels: FSQ levels (the release's (8, 8, 8, 5, 5, 5)).
    nested_dropout_mode: how training samples the kept length: "uniform", "pow2", "uniform_pow2".
    cond_dropout: probability per sample of replacing all registers by the null condition in training
      (for classifier-free guidance).
    max_timestep: the time embedding's range (t in [0, max_timestep]; timesteps here are in [0, 1]).
    zero_init_heads: zero-initialise the encoder's and decoder's output projections (the release's
      `LinearHead` default); a fresh model then gives constant tokens and zero velocities.
    dtype: compute dtype (parameters float32; norms, softmax, FSQ and the flow loss float32).
    remat, scan_layers, attention_impl: of both transformers (`nn.stack`, `nn.attention`); the
      VAE's attention uses attention_impl too.
    repa_layer: 0 (off), or k in 1..dec_depth: the decoder's patch tokens after block k go through
      a REPA projector (`losses.repa.Projector`, hidden repa_hidden, output repa_dim = the DINOv2
      width: 1024 for the paper's DINOv2-L) and `train_forward(..., features=True)` returns them
      on the (grid x grid) patch grid, for `config.repa` (the paper trains the decoder with REPA).
  """

  def __init__(self, *, image_size: int = 256, use_vae: bool = True,
               vae_channels: Sequence[int] = (128, 256, 512, 512), vae_latent_channels: int = 16,
               vae_layers_per_block: int = 2, vae_norm_groups: int = 32,
               vae_mid_attention: bool = True, vae_scaling_factor: float = 1.0,
               vae_sample_posterior: bool = False, patch_size: int = 2, enc_width: int = 1152,
               enc_depth: int = 18, dec_width: int = 1152, dec_depth: int = 18, head_dim: int = 64,
               mlp_ratio: float = 4.0, num_tokens: int = 256,
               fsq_levels: Sequence[int] = FSQ_LEVELS, nested_dropout_mode: str = "uniform",
               cond_dropout: float = 0.1, max_timestep: float = 1.0, zero_init_heads: bool = True,
               dtype: Any = jnp.float32, remat: Any = "none", scan_layers: bool = False,
               attention_impl: Any = None, repa_layer: int = 0, repa_hidden: int = 2048,
               repa_dim: int = 1024, rngs: nnx.Rngs):
    for name, value in (("image_size", image_size), ("patch_size", patch_size),
                        ("enc_width", enc_width), ("enc_depth", enc_depth), ("dec_width", dec_width),
                        ("dec_depth", dec_depth), ("head_dim", head_dim), ("num_tokens", num_tokens)):
      base.check_positive_int(name, value)
    prefix.check_mode(nested_dropout_mode, num_tokens, name="nested_dropout_mode",
                      count="num_tokens")
    if enc_width % 4 or dec_width % 4:
      raise ValueError(f"enc_width and dec_width must be divisible by 4 (2D sin-cos positions), got "
                       f"{enc_width}, {dec_width}")
    if enc_width % head_dim or dec_width % head_dim:
      raise ValueError(f"enc_width and dec_width must be divisible by head_dim {head_dim}, got "
                       f"{enc_width}, {dec_width}")
    if not 0.0 <= cond_dropout < 1.0:
      raise ValueError(f"cond_dropout must be in [0, 1), got {cond_dropout}")
    self.fsq_levels = fsq.check_levels(tuple(int(v) for v in fsq_levels))
    self.image_size, self.patch_size, self.num_tokens = image_size, patch_size, num_tokens
    self.use_vae, self.scaling_factor = use_vae, float(vae_scaling_factor)
    self.sample_posterior = vae_sample_posterior
    self.nested_dropout_mode, self.cond_dropout = nested_dropout_mode, float(cond_dropout)
    self.dtype = dtype
    kw = dict(dtype=dtype, rngs=rngs)
    if use_vae:
      self.vae = flextok_vae.FlexTokVAE(
          channels=vae_channels, latent_channels=vae_latent_channels,
          layers_per_block=vae_layers_per_block, norm_groups=vae_norm_groups,
          mid_attention=vae_mid_attention, attention_impl=attention_impl, **kw)
      factor, self.latent_channels = self.vae.downsample_factor, vae_latent_channels
    else:
      self.vae, factor, self.latent_channels = None, 1, 3
    if image_size % (factor * patch_size):
      raise ValueError(f"image_size must be divisible by the VAE factor x patch_size = "
                       f"{factor} x {patch_size}, got {image_size}")
    self.latent_size = image_size // factor
    self.grid = self.latent_size // patch_size
    self.num_patches = self.grid * self.grid
    patch_dim = patch_size * patch_size * self.latent_channels
    code_dim = len(self.fsq_levels)
    head_init = _ZEROS if zero_init_heads else _XAVIER
    dense = lambda i, o, names, init=_XAVIER: Dense(i, o, names, kernel_init=init, **kw)

    def stack(width, depth, adaln):
      # The release's FlexBlock (see the module docstring); xavier on [W, W] for each of q, k, v, out.
      xavier = xavier_uniform_fused(width, 1)
      block = lambda r: Block(
          width, width // head_dim, mlp_hidden=swiglu_hidden(width, mlp_ratio), mlp="swiglu",
          mlp_bias=False, norm_eps=_LN_EPS, norm_affine=False, adaln=adaln,
          ada_segments=2 if adaln else 1, qkv_bias=False, out_bias=False, qk_norm="layer",
          scale=8.0 / head_dim, implementation=attention_impl, qkv_init=xavier, out_init=xavier,
          mlp_init=_XAVIER, dtype=dtype, rngs=r)
      return Stack(depth, block, scan_layers=scan_layers, remat=remat, rngs=rngs)

    # Encoder.
    self.enc_patch = dense(patch_dim, enc_width, ("patch", "embed"))
    self.registers = nnx.Param(logical_init(_EMB_INIT, None, "embed")(
        rngs.params(), (num_tokens, enc_width), jnp.float32))
    self.encoder = stack(enc_width, enc_depth, adaln=False)
    self.enc_head = dense(enc_width, code_dim, ("embed", None), head_init)

    # Decoder.
    self.dec_from_codes = dense(code_dim, dec_width, (None, "embed"))
    self.dec_register_pos = nnx.Param(logical_init(_EMB_INIT, None, "embed")(
        rngs.params(), (num_tokens, dec_width), jnp.float32))
    self.mask_token = nnx.Param(logical_init(_EMB_INIT, "embed")(rngs.params(), (dec_width,),
                                                                 jnp.float32))
    self.null_cond = nnx.Param(logical_init(_EMB_INIT, "embed")(rngs.params(), (dec_width,),
                                                                jnp.float32))
    self.dec_patch = dense(patch_dim, dec_width, ("patch", "embed"))
    # DiT's time MLP over the release's features (max_period 256, t scaled by 1000 / max_timestep).
    self.max_timestep = float(max_timestep)
    self.time_fc1 = dense(_TIME_FEATURES, dec_width, (None, "embed"))
    self.time_fc2 = dense(dec_width, dec_width, ("mlp", "embed"))
    self.decoder = stack(dec_width, dec_depth, adaln=True)
    self.dec_head_ada = dense(dec_width, 2 * dec_width, ("embed", "mlp"), _ZEROS)
    self.dec_head = dense(dec_width, patch_dim, ("embed", "patch"), head_init)
    repa_lib.check_model_fields(repa_layer, dec_depth, repa_hidden, repa_dim, model="FlexTok")
    self.repa_layer = repa_layer
    self.repa_proj = repa_lib.Projector(dec_width, repa_hidden, repa_dim, **kw) if repa_layer else None

  # ---- pieces

  def images_to_latents(self, images: jax.Array, rng: jax.Array | None = None) -> jax.Array:
    """images [B, S, S, 3] in [0, 1] -> latents float32 [B, h, w, C] (scaled; no gradient to the VAE)."""
    x = images.astype(jnp.float32) * 2.0 - 1.0
    if self.vae is None:
      return x
    mean, logvar = self.vae.encode(x.astype(self.dtype))
    z = vae_lib.sample(mean, logvar, rng) if self.sample_posterior else mean
    # The VAE is frozen (pretrained in the release): the tokenizer's losses never train it.
    return jax.lax.stop_gradient(z * self.scaling_factor)

  def latents_to_images(self, latents: jax.Array) -> jax.Array:
    """latents [B, h, w, C] -> images float32 [B, S, S, 3] clipped to [0, 1]."""
    x = latents if self.vae is None else self.vae.decode(
        (latents / self.scaling_factor).astype(self.dtype))
    return jnp.clip((x.astype(jnp.float32) + 1.0) * 0.5, 0.0, 1.0)

  def _pos(self, width: int) -> jax.Array:
    return sincos_2d(self.grid, self.grid, width)

  def encode_latents(self, latents: jax.Array, num_tokens: int) -> jax.Array:
    """Pre-quantization register outputs: latents [B, h, w, C] -> float32 [B, num_tokens, D].

    Only the first `num_tokens` registers enter the sequence: by the register mask they are exactly
    the first outputs of the full sequence.
    """
    x = self.enc_patch(patchify(latents.astype(self.dtype), self.patch_size))
    x = x + self._pos(x.shape[-1]).astype(x.dtype)
    regs = self.registers.get_value()[:num_tokens].astype(x.dtype)
    x = jnp.concatenate([x, jnp.broadcast_to(regs, (x.shape[0],) + regs.shape)], axis=1)
    x = self.encoder(x, mask=register_mask(self.num_patches, num_tokens))
    return self.enc_head(_layer_norm(x[:, self.num_patches:])).astype(jnp.float32)

  def velocity(self, x_t: jax.Array, t: jax.Array, codes: jax.Array, keep_k: jax.Array,
               null: jax.Array, *, features: bool = False):
    """The decoder: predicted velocity float32 [B, h, w, C] (with features=True, the pair (velocity,
    REPA features float32 [B, N, repa_dim] of the patch tokens after decoder block repa_layer)).

    Args:
      x_t: [B, h, w, C] noisy latents; t: [B] float in [0, 1].
      codes: [B, K, D] float FSQ codes (all K slots; slots >= keep_k are ignored).
      keep_k: [B] int, kept register count per sample (slots >= keep_k get the mask token).
      null: [B] bool, replace all registers by the null condition (classifier-free guidance).
    """
    r = self.dec_from_codes(codes.astype(self.dtype))
    r = r + self.dec_register_pos.get_value().astype(r.dtype)
    r = prefix.nested_dropout(r, keep_k, self.mask_token.get_value())
    r = jnp.where(null[:, None, None], self.null_cond.get_value().astype(r.dtype), r)
    p = self.dec_patch(patchify(x_t.astype(self.dtype), self.patch_size))
    p = p + self._pos(p.shape[-1]).astype(p.dtype)
    x = jnp.concatenate([p, r], axis=1)
    freqs = timestep_embedding(t, _TIME_FEATURES, max_period=256.0, scale=1000.0 / self.max_timestep)
    cond = self.time_fc2(jax.nn.silu(self.time_fc1(freqs)))
    kwargs = dict(cond=cond, segments=(self.num_patches, self.num_tokens))
    if features:
      if self.repa_proj is None:
        raise ValueError("features=True needs a REPA projector: build FlexTok with repa_layer > 0")
      x, hidden = self.decoder(x, capture=self.repa_layer, **kwargs)
    else:
      x = self.decoder(x, **kwargs)
    shift, scale = jnp.split(self.dec_head_ada(jax.nn.silu(cond))[:, None], 2, axis=-1)
    out = self.dec_head(_layer_norm(x[:, :self.num_patches]) * (1.0 + scale) + shift)
    v = unpatchify(out.astype(jnp.float32), self.patch_size, self.grid, self.grid)
    return (v, self.repa_proj(hidden[:, :self.num_patches])) if features else v

  def _check_rng(self, rng, needed: bool, what: str):
    if needed and rng is None:
      raise ValueError(f"rng must be a PRNG key for {what}, got None")

  # ---- the tokenizer contract

  def encode(self, images: jax.Array, *, num_tokens: int | None = None, rng: jax.Array | None = None,
             train: bool = False) -> EncodeOutput:
    """images float [B, S, S, 3] in [0, 1] -> EncodeOutput(tokens int32 [B, K'], codes float [B, K', D]
    straight-through, losses {} (FSQ has none), metrics {usage, perplexity, dim_usage}).

    K' = num_tokens (default K); the first K' tokens are the same whatever K' is. `rng` is needed
    only with vae_sample_posterior; `train` changes nothing (FSQ is deterministic).
    """
    check_images(images, self.image_size)
    k = check_num_tokens(num_tokens, self.num_tokens) or self.num_tokens
    self._check_rng(rng, self.use_vae and self.sample_posterior, "VAE posterior sampling")
    z = self.encode_latents(self.images_to_latents(images, rng), k)
    q = fsq.quantize(z, self.fsq_levels, train=train)
    return EncodeOutput(tokens=q.indices, codes=q.codes, losses=dict(q.losses), metrics=q.metrics)

  def decode(self, tokens: jax.Array, *, rng: jax.Array | None = None, num_steps: int = 25,
             cfg_scale: float = 1.0, guidance: str = "cfg", train: bool = False,
             noise: jax.Array | None = None) -> jax.Array:
    """tokens int [B, K'] (any prefix length 1 <= K' <= K) -> images float32 [B, S, S, 3] in [0, 1].

    Euler sampling (`samplers.flow.sample`) with `num_steps` steps from noise drawn with `rng` (None:
    key 0, deterministic), or from `noise` float [B, h, w, C] when given (e.g. to replay another
    implementation's draw). cfg_scale != 1 adds an unconditional pass per step (registers replaced
    by the null condition), combined by `guidance`: "cfg" u + s (c - u), or "apg"
    (`samplers.guidance.apg`, the release README's choice with cfg_scale 7.5). `train` is accepted for the contract; decoding is the same in both.
    """
    del train
    base.check_int_array("tokens", tokens)
    if tokens.ndim != 2 or not 1 <= tokens.shape[1] <= self.num_tokens:
      raise ValueError(f"tokens must be [B, K'] with 1 <= K' <= {self.num_tokens}, got shape "
                       f"{tuple(tokens.shape)}")
    num_steps = base.check_positive_int("num_steps", num_steps)
    if isinstance(cfg_scale, bool) or not isinstance(cfg_scale, (int, float)):
      raise TypeError(f"cfg_scale must be a Python float (static), got {type(cfg_scale).__name__}")
    if guidance not in ("cfg", "apg"):
      raise ValueError(f"guidance must be 'cfg' or 'apg', got {guidance!r}")
    b, k = tokens.shape
    codes = fsq.indices_to_codes(tokens, self.fsq_levels)
    codes = jnp.pad(codes, ((0, 0), (0, self.num_tokens - k), (0, 0)))
    keep = jnp.full((b,), k, jnp.int32)
    shape = (b, self.latent_size, self.latent_size, self.latent_channels)
    if noise is None:
      x1 = jax.random.normal(jax.random.key(0) if rng is None else rng, shape)
    else:
      base.check_float_array("noise", noise)
      if tuple(noise.shape) != shape:
        raise ValueError(f"noise must have shape {shape} (tokens' batch, latent size, latent "
                         f"channels), got {tuple(noise.shape)}")
      x1 = noise.astype(jnp.float32)
    # The conditional and (when guided) null-conditioned inputs: flow.sample runs both halves as one
    # 2B batch per step, [cond; uncond], and carries APG's momentum.
    cond = (codes, keep, jnp.zeros((b,), bool))
    uncond = (codes, keep, jnp.ones((b,), bool)) if float(cfg_scale) != 1.0 else None
    field = lambda x, t, c: self.velocity(x, jnp.full((x.shape[0],), t, jnp.float32), *c)
    x0 = flow.sample(flow.flip_time(field), x1, cond, steps=num_steps, uncond=uncond,
                     cfg_scale=float(cfg_scale), guidance=guidance)
    return self.latents_to_images(x0)

  def train_forward(self, images: jax.Array, *, rng: jax.Array, step: int | jax.Array | None = None,
                    target: str = "pixels", perturb: dict | None = None,
                    num_tokens: int | None = None, features: bool = False) -> TrainOutput:
    """One rectified-flow training pass: TrainOutput(recon=None, losses={"flow"}, metrics), plus
    features [B, N, repa_dim] (REPA: the projected decoder patch tokens of this noisy pass, on the
    grid x grid patch grid) when features=True.

    Per sample: kept length keep_k (nested dropout over 1..K', K' = num_tokens or K, in
    `nested_dropout_mode`), condition dropout with probability `cond_dropout`, t = sigmoid(N(0, 1));
    the loss is mean((v(x_t, t) - (noise - x0))^2) over latents, in float32. target must be "pixels"
    (the flow loss replaces pixel losses; there is no proxy head). `perturb` (RobusTok settings,
    annealed on `step`) moves tokens of the first floor(B * beta) images to nearby FSQ grid points
    (`quantizers.perturb.perturb_fsq`) before the decoder sees them.
    """
    check_target(target, proxy_head=False, model="FlexTok")
    self._check_rng(rng, True, "train_forward")
    check_images(images, self.image_size)
    k = check_num_tokens(num_tokens, self.num_tokens) or self.num_tokens
    r_vae, r_keep, r_null, r_t, r_noise = jax.random.split(rng, 5)
    b = images.shape[0]
    x0 = self.images_to_latents(images, r_vae)
    z = self.encode_latents(x0, k)
    q = fsq.quantize(z, self.fsq_levels, train=True)
    codes, metrics = q.codes, dict(q.metrics)
    if perturb is not None:
      # Its own stream: the draws of the unperturbed pass stay those of the plain recipe.
      codes, info = perturb_lib.apply(perturb, step, jax.random.fold_in(rng, 1), z, codes, q.indices,
                                      fsq_levels=self.fsq_levels)
      metrics.update(info)
    codes = jnp.pad(codes, ((0, 0), (0, self.num_tokens - k), (0, 0)))
    keep = prefix.sample_keep_k(r_keep, b, k, self.nested_dropout_mode)
    null = jax.random.bernoulli(r_null, self.cond_dropout, (b,))
    t = jax.nn.sigmoid(jax.random.normal(r_t, (b,), jnp.float32))
    noise = jax.random.normal(r_noise, x0.shape, jnp.float32)
    x_t, target = flow_targets(x0, noise, t)
    v = self.velocity(x_t, t, codes, keep, null, features=features)
    v, feats = v if features else (v, None)
    loss = jnp.mean(jnp.square(v - target))
    metrics.update(keep_k=jnp.mean(keep.astype(jnp.float32)), t=jnp.mean(t),
                   null_fraction=jnp.mean(null.astype(jnp.float32)))
    return TrainOutput(recon=None, losses={"flow": loss, **q.losses}, metrics=metrics,
                       features=feats)


_FIELDS = ("image_size", "use_vae", "vae_channels", "vae_latent_channels", "vae_layers_per_block",
           "vae_norm_groups", "vae_mid_attention", "vae_scaling_factor", "vae_sample_posterior",
           "patch_size", "enc_width", "enc_depth", "dec_width", "dec_depth", "head_dim", "mlp_ratio",
           "num_tokens", "fsq_levels", "nested_dropout_mode", "cond_dropout", "max_timestep",
           "zero_init_heads", "repa_layer", "repa_hidden", "repa_dim")


def make_model(cfg: Mapping[str, Any], *, rngs: nnx.Rngs) -> FlexTok:
  """A FlexTok from plain fields.

  `size` (one of CONFIGS: "d12_d12", "d18_d18", "d18_d28", "tiny") gives the defaults; any field of
  FlexTok (see its Args) overrides them; `name` and `null_cond` are accepted. Common options: dtype, remat, scan_layers, attention_impl
  (`nn.options`). Any other key raises ValueError listing the valid ones.
  """
  cfg = as_dict(cfg)
  size = cfg.get("size")
  if size is not None and size not in CONFIGS:
    raise ValueError(f"size must be one of {sorted(CONFIGS)}, got {size!r}")
  # null_cond ("learned" | "zero") records how a converted checkpoint filled the null_cond
  # parameter (`convert.flextok`); the model has that parameter either way.
  fields = model_kwargs(cfg, _FIELDS, model="FlexTok", extra=("name", "size", "null_cond"),
                        cls=FlexTok)
  kwargs = dict(CONFIGS[size]) if size is not None else {}
  kwargs.update(fields)
  for key in ("fsq_levels", "vae_channels"):
    if key in kwargs:
      kwargs[key] = tuple(int(v) for v in kwargs[key])
  return FlexTok(**kwargs, rngs=rngs)
