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
t = sigmoid(N(0, 1)) (logit-normal). Sampling is Euler from t = 1 to 0: x <- x - v(x, t) / T at
t = i/T for i = T..1; guidance (u computed with the null condition) is classifier-free u + s (c - u)
or the release's APG variant.

Decoding k < K tokens keeps the decoder's K register slots and fills slots >= k with the mask token,
exactly as the release's `detokenize` does (so truncation is what nested dropout trained for).

Dimension names: B batch, H/W image size, h/w latent size, C latent channels, p patch size,
N = (h/p)(w/p) patches, K registers (max tokens), K' kept tokens, D = 6 code dimension, W width.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxtok.nn import flextok_layers as L
from jaxtok.quantizers import base, fsq
from jaxtok.samplers import guidance
from jaxtok.sharding import logical_init
from jaxtok.tokenizers import flextok_vae
from jaxtok.tokenizers.api import (EncodeOutput, TrainOutput, as_dict, check_images, check_num_tokens,
                                   compute_dtype)

FSQ_LEVELS = (8, 8, 8, 5, 5, 5)
KEEP_K_MODES = ("uniform", "pow2", "uniform_pow2")
# The release's learned vectors use torch's trunc_normal_(std=0.02), whose bounds are absolute (+-2),
# i.e. about +-100 std: in effect an untruncated normal.
_EMB_INIT = nnx.initializers.normal(0.02)

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


def patchify(x: jax.Array, p: int) -> jax.Array:
  """[B, h, w, C] -> [B, (h/p)(w/p), p*p*C], patches row-major, features in (row, col, channel) order."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(x: jax.Array, p: int, h: int, w: int) -> jax.Array:
  """Inverse of `patchify`: [B, N, p*p*C] -> [B, h, w, C]."""
  b, _, d = x.shape
  c = d // (p * p)
  x = x.reshape(b, h // p, w // p, p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h, w, c)


def sample_keep_k(rng: jax.Array, batch: int, max_k: int, mode: str = "uniform") -> jax.Array:
  """Nested-dropout lengths, int32 [B] in [1, max_k] (the release's `MaskedNestedDropout` modes).

  uniform: uniform over 1..max_k; pow2: uniform over {1, 2, 4, ..., max_k}; uniform_pow2: uniform
  over 1..max_k, rounded up to the next power of two. The power-of-two modes need max_k a power of 2.
  """
  if mode not in KEEP_K_MODES:
    raise ValueError(f"nested dropout mode must be one of {KEEP_K_MODES}, got {mode!r}")
  if mode != "uniform" and max_k & (max_k - 1):
    raise ValueError(f"nested dropout mode {mode!r} needs a power-of-two token count, got {max_k}")
  if mode == "pow2":
    e = jax.random.randint(rng, (batch,), 0, int(math.log2(max_k)) + 1)
    return jnp.left_shift(jnp.int32(1), e).astype(jnp.int32)
  k = jax.random.randint(rng, (batch,), 1, max_k + 1).astype(jnp.int32)
  if mode == "uniform_pow2":
    # Smallest power of two >= k: 1 << bit_length(k - 1).
    k = jnp.left_shift(jnp.int32(1), 32 - jax.lax.clz(k - 1)).astype(jnp.int32)
  return k


def nested_dropout(x: jax.Array, keep_k: jax.Array, mask_token: jax.Array) -> jax.Array:
  """x [B, K, W] with rows >= keep_k[b] replaced by mask_token [W] (kept length per sample)."""
  keep = jnp.arange(x.shape[1])[None, :, None] < keep_k[:, None, None]
  return jnp.where(keep, x, mask_token.astype(x.dtype))


# Guidance formulas live in jaxtok.samplers.guidance (one definition for every sampler); these names
# keep FlexTok's decoder readable. cfg_combine: u + s (c - u), exactly c at s = 1. apg_combine: the
# release's APG (momentum -0.5, eta 0, norm threshold 2.5 by default); returns (guided, new average).
cfg_combine = guidance.cfg_uncond_base
apg_combine = guidance.apg


def euler_sample(velocity_fn: Callable, x1: jax.Array, num_steps: int, carry: Any = None) -> jax.Array:
  """Euler integration of dx/dt = v(x, t) from t = 1 (x1, noise) down to t = 0.

  Step i = T..1 evaluates v at t = i/T and sets x <- x - v / T (the release's MinRF pipeline).
  velocity_fn(x, t) takes t as a float32 scalar; with `carry` (a pytree, e.g. APG's momentum)
  it is velocity_fn(x, t, carry) -> (v, carry). Runs in one `lax.fori_loop`; returns float32 x0.
  """
  num_steps = base.check_positive_int("num_steps", num_steps)
  dt = 1.0 / num_steps
  stateful = carry is not None

  def body(i, state):
    x, c = state
    t = (num_steps - i).astype(jnp.float32) * dt
    if stateful:
      v, c = velocity_fn(x, t, c)
    else:
      v = velocity_fn(x, t)
    return x - dt * v.astype(jnp.float32), c

  x, _ = jax.lax.fori_loop(0, num_steps, body, (x1.astype(jnp.float32), carry))
  return x


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
               dtype: Any = jnp.float32, rngs: nnx.Rngs):
    for name, value in (("image_size", image_size), ("patch_size", patch_size),
                        ("enc_width", enc_width), ("enc_depth", enc_depth), ("dec_width", dec_width),
                        ("dec_depth", dec_depth), ("head_dim", head_dim), ("num_tokens", num_tokens)):
      base.check_positive_int(name, value)
    if nested_dropout_mode not in KEEP_K_MODES:
      raise ValueError(f"nested_dropout_mode must be one of {KEEP_K_MODES}, got "
                       f"{nested_dropout_mode!r}")
    if nested_dropout_mode != "uniform" and num_tokens & (num_tokens - 1):
      raise ValueError(f"nested_dropout_mode {nested_dropout_mode!r} needs num_tokens a power of two, "
                       f"got {num_tokens}")
    if enc_width % 4 or dec_width % 4:
      raise ValueError(f"enc_width and dec_width must be divisible by 4 (2D sin-cos positions), got "
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
          mid_attention=vae_mid_attention, **kw)
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
    head_init = L.ZEROS if zero_init_heads else L.XAVIER

    # Encoder.
    self.enc_patch = L._linear(patch_dim, enc_width, ("patch", "embed"), bias=True, **kw)
    self.registers = nnx.Param(logical_init(_EMB_INIT, None, "embed")(
        rngs.params(), (num_tokens, enc_width), jnp.float32))
    self.enc_blocks = nnx.List([L.Block(enc_width, head_dim, mlp_ratio, **kw)
                                for _ in range(enc_depth)])
    self.enc_head = L._linear(enc_width, code_dim, ("embed", None), bias=True, init=head_init, **kw)

    # Decoder.
    self.dec_from_codes = L._linear(code_dim, dec_width, (None, "embed"), bias=True, **kw)
    self.dec_register_pos = nnx.Param(logical_init(_EMB_INIT, None, "embed")(
        rngs.params(), (num_tokens, dec_width), jnp.float32))
    self.mask_token = nnx.Param(logical_init(_EMB_INIT, "embed")(rngs.params(), (dec_width,),
                                                                 jnp.float32))
    self.null_cond = nnx.Param(logical_init(_EMB_INIT, "embed")(rngs.params(), (dec_width,),
                                                                jnp.float32))
    self.dec_patch = L._linear(patch_dim, dec_width, ("patch", "embed"), bias=True, **kw)
    self.time_embed = L.TimestepEmbedder(dec_width, max_timestep=max_timestep, **kw)
    self.dec_blocks = nnx.List([L.AdaLNBlock(dec_width, head_dim, mlp_ratio, expansion=2, **kw)
                                for _ in range(dec_depth)])
    self.dec_head_ada = L._linear(dec_width, 2 * dec_width, ("embed", "mlp"), bias=True, init=L.ZEROS,
                                  **kw)
    self.dec_head = L._linear(dec_width, patch_dim, ("embed", "patch"), bias=True, init=head_init,
                              **kw)

  # ---- pieces

  def images_to_latents(self, images: jax.Array, rng: jax.Array | None = None) -> jax.Array:
    """images [B, S, S, 3] in [0, 1] -> latents float32 [B, h, w, C] (scaled; no gradient to the VAE)."""
    x = images.astype(jnp.float32) * 2.0 - 1.0
    if self.vae is None:
      return x
    mean, logvar = self.vae.encode(x.astype(self.dtype))
    z = flextok_vae.sample_posterior(mean, logvar, rng) if self.sample_posterior else mean
    # The VAE is frozen (pretrained in the release): the tokenizer's losses never train it.
    return jax.lax.stop_gradient(z * self.scaling_factor)

  def latents_to_images(self, latents: jax.Array) -> jax.Array:
    """latents [B, h, w, C] -> images float32 [B, S, S, 3] clipped to [0, 1]."""
    x = latents if self.vae is None else self.vae.decode(
        (latents / self.scaling_factor).astype(self.dtype))
    return jnp.clip((x.astype(jnp.float32) + 1.0) * 0.5, 0.0, 1.0)

  def _pos(self, width: int) -> jax.Array:
    return L.sincos_2d(self.grid, self.grid, width).reshape(self.num_patches, width)

  def encode_latents(self, latents: jax.Array, num_tokens: int) -> jax.Array:
    """Pre-quantization register outputs: latents [B, h, w, C] -> float32 [B, num_tokens, D].

    Only the first `num_tokens` registers enter the sequence: by the register mask they are exactly
    the first outputs of the full sequence.
    """
    x = self.enc_patch(patchify(latents.astype(self.dtype), self.patch_size))
    x = x + self._pos(x.shape[-1]).astype(x.dtype)
    regs = self.registers.get_value()[:num_tokens].astype(x.dtype)
    x = jnp.concatenate([x, jnp.broadcast_to(regs, (x.shape[0],) + regs.shape)], axis=1)
    mask = L.register_mask(self.num_patches, num_tokens)
    for block in self.enc_blocks:
      x = block(x, mask)
    return self.enc_head(L.layer_norm(x[:, self.num_patches:])).astype(jnp.float32)

  def velocity(self, x_t: jax.Array, t: jax.Array, codes: jax.Array, keep_k: jax.Array,
               null: jax.Array) -> jax.Array:
    """The decoder: predicted velocity float32 [B, h, w, C].

    Args:
      x_t: [B, h, w, C] noisy latents; t: [B] float in [0, 1].
      codes: [B, K, D] float FSQ codes (all K slots; slots >= keep_k are ignored).
      keep_k: [B] int, kept register count per sample (slots >= keep_k get the mask token).
      null: [B] bool, replace all registers by the null condition (classifier-free guidance).
    """
    b = x_t.shape[0]
    r = self.dec_from_codes(codes.astype(self.dtype))
    r = r + self.dec_register_pos.get_value().astype(r.dtype)
    r = nested_dropout(r, keep_k, self.mask_token.get_value())
    r = jnp.where(null[:, None, None], self.null_cond.get_value().astype(r.dtype), r)
    p = self.dec_patch(patchify(x_t.astype(self.dtype), self.patch_size))
    p = p + self._pos(p.shape[-1]).astype(p.dtype)
    x = jnp.concatenate([p, r], axis=1)
    cond = self.time_embed(t)
    segments = (self.num_patches, self.num_tokens)
    for block in self.dec_blocks:
      x = block(x, cond, segments)
    shift, scale = jnp.split(self.dec_head_ada(jax.nn.silu(cond))[:, None], 2, axis=-1)
    out = self.dec_head(L.modulate(L.layer_norm(x[:, :self.num_patches]), shift, scale))
    return unpatchify(out.astype(jnp.float32), self.patch_size, self.latent_size, self.latent_size)

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

    Euler sampling with `num_steps` steps from noise drawn with `rng` (None: key 0, deterministic),
    or from `noise` float [B, h, w, C] when given (e.g. to replay another implementation's draw).
    cfg_scale != 1 adds an unconditional pass per step (registers replaced by the null condition),
    combined by `guidance`: "cfg" u + s (c - u), or "apg" (`apg_combine`, the release README's
    choice with cfg_scale 7.5). `train` is accepted for the contract; decoding is the same in both.
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
    guided = float(cfg_scale) != 1.0

    def cond_uncond(x, t):
      # One batched pass: first half conditional, second half with the null condition.
      tt = jnp.full((2 * b,), t, jnp.float32)
      two = lambda a: jnp.concatenate([a, a], axis=0)
      null = jnp.concatenate([jnp.zeros((b,), bool), jnp.ones((b,), bool)])
      v = self.velocity(two(x), tt, two(codes), two(keep), null)
      return v[:b], v[b:]

    if not guided:
      fn = lambda x, t: self.velocity(x, jnp.full((b,), t, jnp.float32), codes, keep,
                                      jnp.zeros((b,), bool))
      x0 = euler_sample(fn, x1, num_steps)
    elif guidance == "cfg":
      x0 = euler_sample(lambda x, t: cfg_combine(*cond_uncond(x, t), float(cfg_scale)), x1, num_steps)
    else:
      apg = lambda x, t, avg: apg_combine(*cond_uncond(x, t), float(cfg_scale), avg)
      x0 = euler_sample(apg, x1, num_steps, carry=jnp.zeros_like(x1))
    return self.latents_to_images(x0)

  def train_forward(self, images: jax.Array, *, rng: jax.Array,
                    num_tokens: int | None = None) -> TrainOutput:
    """One rectified-flow training pass: TrainOutput(recon=None, losses={"flow"}, metrics).

    Per sample: kept length keep_k (nested dropout over 1..K', K' = num_tokens or K), condition
    dropout with probability `cond_dropout`, t = sigmoid(N(0, 1)); the loss is
    mean((v(x_t, t) - (noise - x0))^2) over latents, in float32.
    """
    self._check_rng(rng, True, "train_forward")
    check_images(images, self.image_size)
    k = check_num_tokens(num_tokens, self.num_tokens) or self.num_tokens
    r_vae, r_keep, r_null, r_t, r_noise = jax.random.split(rng, 5)
    b = images.shape[0]
    x0 = self.images_to_latents(images, r_vae)
    z = self.encode_latents(x0, k)
    q = fsq.quantize(z, self.fsq_levels, train=True)
    codes = jnp.pad(q.codes, ((0, 0), (0, self.num_tokens - k), (0, 0)))
    keep = sample_keep_k(r_keep, b, k, self.nested_dropout_mode)
    null = jax.random.bernoulli(r_null, self.cond_dropout, (b,))
    t = jax.nn.sigmoid(jax.random.normal(r_t, (b,), jnp.float32))
    noise = jax.random.normal(r_noise, x0.shape, jnp.float32)
    x_t, target = flow_targets(x0, noise, t)
    v = self.velocity(x_t, t, codes, keep, null)
    loss = jnp.mean(jnp.square(v - target))
    metrics = dict(q.metrics)
    metrics.update(keep_k=jnp.mean(keep.astype(jnp.float32)), t=jnp.mean(t),
                   null_fraction=jnp.mean(null.astype(jnp.float32)))
    return TrainOutput(recon=None, losses={"flow": loss, **q.losses}, metrics=metrics)


_FIELDS = ("image_size", "use_vae", "vae_channels", "vae_latent_channels", "vae_layers_per_block",
           "vae_norm_groups", "vae_mid_attention", "vae_scaling_factor", "vae_sample_posterior",
           "patch_size", "enc_width", "enc_depth", "dec_width", "dec_depth", "head_dim", "mlp_ratio",
           "num_tokens", "fsq_levels", "nested_dropout_mode", "cond_dropout", "max_timestep",
           "zero_init_heads")


def make_model(cfg: Mapping[str, Any], *, rngs: nnx.Rngs) -> FlexTok:
  """A FlexTok from plain fields.

  `size` (one of CONFIGS: "d12_d12", "d18_d18", "d18_d28", "tiny") gives the defaults; any field of
  FlexTok (see its Args) overrides them; `dtype` ("float32" / "bfloat16") sets the compute dtype.
  Unknown fields are ignored (configs also hold training fields).
  """
  cfg = as_dict(cfg)
  size = cfg.get("size")
  if size is not None and size not in CONFIGS:
    raise ValueError(f"size must be one of {sorted(CONFIGS)}, got {size!r}")
  kwargs = dict(CONFIGS[size]) if size is not None else {}
  kwargs.update({k: cfg[k] for k in _FIELDS if k in cfg and cfg[k] is not None})
  for key in ("fsq_levels", "vae_channels"):
    if key in kwargs:
      kwargs[key] = tuple(int(v) for v in kwargs[key])
  return FlexTok(**kwargs, dtype=compute_dtype(cfg.get("dtype")), rngs=rngs)
