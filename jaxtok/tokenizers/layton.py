"""Layton: Latent Consistency Tokenizer (OPPO-Mente-Lab): K 1D tokens decoded by a
latent consistency decoder into the latent space of a frozen latent-diffusion VAE.

  images [0, 1] -> TiTok-style ViT encoder (patches + K learned latent tokens, `titok.TiTokEncoder`)
  -> K latents -> codebook (`tokenizers.bottleneck`, VQ by default) -> tokens int32 [B, K]
  decode: x_T ~ N(0, I) on the VAE latent grid -> 1-4 consistency steps conditioned on the token codes
  (`samplers.consistency.sample`) -> VAE latents / scaling_factor -> frozen VAE decoder -> pixels.

Consistency function (LCM's discrete-time parameterisation, `samplers.consistency`):
  f(x_t, t, c) = c_skip(t) x_t + c_out(t) x0_hat,  x0_hat from the network F(x_t, t, c):
    prediction "epsilon" (LCM / Stable Diffusion): x0_hat = (x_t - sqrt(1 - abar_t) F) / sqrt(abar_t)
    prediction "sample": x0_hat = F.
  c_skip(0) = 1, c_out(0) = 0: f(x, 0, c) = x exactly.

F (the "latent consistency decoder" network) is a DiT-style transformer made of the shared parts:
noisy latent patches (linear + 2D sin-cos) followed by the K token codes (linear + learned positions)
in one sequence, adaLN-zero `nn.Block`s driven by a time embedding, a final adaLN + linear back to
patches. Layton builds F from a pretrained Stable Diffusion UNet conditioned on the tokens; a
pretrained UNet is out of reach here, so F is trained from scratch.

Training (`train_forward`), stated exactly:
  * Consistency training (CT, Song et al. 2023, in LCM's skipping-step form; no teacher: we have no
    pretrained diffusion decoder to distil from, which Layton's LCD stage has). Per sample draw
    n ~ U{0..N-1}, t_hi = origin[n] (19, 39, ..., 999), t_lo = max(t_hi - k, 0) (k = T / N = 20),
    one eps ~ N(0, I); x_hi = sqrt(abar_hi) x0 + sqrt(1 - abar_hi) eps and x_lo likewise from the same
    eps (this is the DDIM step from x_hi with the true x0, the CT estimator of the ODE step).
    Loss = mean pseudo-Huber(f_theta(x_hi, t_hi, c) - sg[f_theta-(x_lo, t_lo, sg c)], huber_c)
    (LCM's sqrt(d^2 + c^2) - c), weighted by consistency_weight, returned as losses["consistency"].
  * Target network theta- (LCM: EMA 0.95): a copy of F whose variables are `ConsistencyTarget`
    (non-parameters: the optimizer never sees them; the train step carries them as model state).
    train_forward updates it after computing the loss: theta- <- mu theta- + (1 - mu) sg(theta), with
    theta the parameters this step's gradient is taken at (so the target trails the classic
    "update after the optimizer step" by one step). target_decay 0 gives iCT's theta- = sg(theta).
  * Pixel supervision (Layton's reason for a 1-2 step decoder): recon = VAE-decoded result of
    `train_steps` consistency sampling steps from fresh noise, with gradients through F, the tokens
    and the encoder; the trainer adds its l1 / l2 / perceptual / GAN losses on it. The VAE stays
    frozen: its weights enter every pass behind stop_gradient (zero gradients), and configs.layton
    exempts them from weight decay, so AdamW never moves them.

Dimension names: B batch, S image size, K tokens, D code dimension, h/w latent size, C latent
channels, p latent patch size, N = (h/p)^2 latent patches, W decoder width.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtok.nn import norm as norm_lib
from jaxtok.nn.block import Block
from jaxtok.nn.dense import Dense
from jaxtok.nn.embeddings import LearnedEmbedding, scaled_normal, sincos_2d, timestep_embedding
from jaxtok.nn.options import model_kwargs
from jaxtok.nn.stack import Stack
from jaxtok.nn.vit import patchify, unpatchify
from jaxtok.quantizers import base
from jaxtok.samplers import consistency
from jaxtok.sharding import logical_init
from jaxtok.tokenizers import bottleneck as bottleneck_lib
from jaxtok.tokenizers import flextok_vae
from jaxtok.tokenizers.api import (EncodeOutput, TrainOutput, as_dict, check_images,
                                   check_num_tokens, check_target, compute_dtype)
from jaxtok.tokenizers.titok import TiTokEncoder

PREDICTIONS = ("epsilon", "sample")
_TIME_FEATURES = 256
_ZEROS = nnx.initializers.zeros


class ConsistencyTarget(nnx.Variable):
  """The EMA target network's weights theta- (not trained by gradient; updated in train_forward)."""


def retype_params(module: nnx.Module, new_type: type[nnx.Variable]) -> None:
  """Replaces every nnx.Param in `module` (recursively) by `new_type` with the same value and
  metadata, in place."""
  for _, sub in nnx.iter_modules(module):
    for name, value in list(vars(sub).items()):
      if isinstance(value, nnx.Param):
        setattr(sub, name, new_type(value.get_value(), **value.get_metadata()))
  if jax.tree.leaves(nnx.state(module, nnx.Param)):
    raise RuntimeError("retype_params left parameters behind (a Param outside a module attribute)")


def pseudo_huber(d: jax.Array, c: float) -> jax.Array:
  """LCM's elementwise sqrt(d^2 + c^2) - c (float32): ~|d| for |d| >> c, ~d^2 / (2c) near 0."""
  d = d.astype(jnp.float32)
  return jnp.sqrt(jnp.square(d) + c * c) - c


class LaytonDecoder(nnx.Module):
  """F(x_t, t, codes): x_t [B, h, w, C], t int [B], codes [B, K, D] -> float32 [B, h, w, C]."""

  def __init__(self, *, latent_size: int, latent_channels: int, patch_size: int, token_size: int,
               num_tokens: int, width: int, depth: int, num_heads: int, dtype, remat, scan_layers,
               attention_impl, rngs: nnx.Rngs):
    if latent_size % patch_size:
      raise ValueError(f"the latent size {latent_size} must be divisible by latent_patch_size "
                       f"{patch_size}")
    if width % 4:
      raise ValueError(f"dec_width must be divisible by 4 (2D sin-cos positions), got {width}")
    self.patch, self.grid, self.width, self.dtype = patch_size, latent_size // patch_size, width, dtype
    patch_dim = patch_size * patch_size * latent_channels
    kw = dict(dtype=dtype, rngs=rngs)
    self.patch_in = Dense(patch_dim, width, ("patch", "embed"), **kw)
    self.code_in = Dense(token_size, width, (None, "embed"), **kw)
    self.token_pos = LearnedEmbedding(num_tokens, width, rngs=rngs)
    self.time_fc1 = Dense(_TIME_FEATURES, width, (None, "embed"), **kw)
    self.time_fc2 = Dense(width, width, ("mlp", "embed"), **kw)
    block = lambda r: Block(width, num_heads, mlp_hidden=4 * width, adaln=True,
                            implementation=attention_impl, dtype=dtype, rngs=r)
    self.blocks = Stack(depth, block, scan_layers=scan_layers, remat=remat, rngs=rngs)
    self.head_ada = Dense(width, 2 * width, ("embed", "mlp"), kernel_init=_ZEROS, **kw)
    self.head = Dense(width, patch_dim, ("embed", "patch"), kernel_init=_ZEROS, **kw)

  def __call__(self, x_t: jax.Array, t: jax.Array, codes: jax.Array) -> jax.Array:
    n = self.grid * self.grid
    p = self.patch_in(patchify(x_t.astype(self.dtype), self.patch))
    p = p + sincos_2d(self.grid, self.grid, self.width).astype(p.dtype)
    c = self.code_in(codes.astype(self.dtype)) + self.token_pos(codes.shape[1]).astype(self.dtype)
    # Integer timesteps straight into the sinusoid (scale 1: frequencies up to 1 per timestep).
    cond = self.time_fc2(jax.nn.silu(self.time_fc1(
        timestep_embedding(t.astype(jnp.float32), _TIME_FEATURES, scale=1.0).astype(self.dtype))))
    x = self.blocks(jnp.concatenate([p, c], axis=1), cond=cond)
    shift, scale = jnp.split(self.head_ada(jax.nn.silu(cond))[:, None], 2, axis=-1)
    h = norm_lib.normalize(x[:, :n], "layer", 1e-6).astype(x.dtype) * (1.0 + scale) + shift
    return unpatchify(self.head(h).astype(jnp.float32), self.patch, self.grid, self.grid)


class Layton(nnx.Module):
  """Layton tokenizer (see the module docstring).

  Args:
    image_size, patch_size: S and the encoder's pixel patch.
    enc_width, enc_depth, enc_heads: the ViT encoder.
    num_latent_tokens: K (256 in the paper's 1024px model).
    token_size, quantizer, codebook_size, use_l2_norm, commitment_cost, fsq_levels,
      quantizer_options: the codebook (`tokenizers.bottleneck`, any discrete kind).
    use_vae: decode into the latent space of a frozen `flextok_vae.FlexTokVAE` (Stable Diffusion's
      VAE layout: pretrained weights through vae_checkpoint, else random); False uses pixels in [-1, 1] as the "latents" (tests, quick runs).
    vae_channels, vae_latent_channels, vae_layers_per_block, vae_norm_groups, vae_mid_attention,
      vae_scaling_factor: that VAE (SD: 4 latent channels, scaling factor 0.18215).
    vae_checkpoint: "" (the VAE starts random) or a pretrained VAE to start from and keep frozen: a
      directory written by `tools/convert.py --model ldm_vae` (e.g. stabilityai/sd-vae-ft-mse) or an
      official file (`convert.ldm_vae.read_weights`); its sizes and scaling factor must equal the
      vae_* fields (ValueError naming the ones that differ). Read when the model is built.
    latent_patch_size, dec_width, dec_depth, dec_heads: the consistency network F.
    prediction: "epsilon" (LCM / SD) or "sample" (F predicts x0).
    num_train_timesteps, beta_start, beta_end: the DDPM schedule (SD's scaled_linear).
    num_origin_steps: N, the consistency solver grid (LCM: 50).
    sigma_data, timestep_scaling: the boundary coefficients (LCM: 0.5, 10).
    huber_c, consistency_weight: the CT loss.
    target_decay: mu of the target network's EMA (LCM: 0.95; 0 = iCT's stop-gradient target).
    train_steps: consistency steps of the pixel-supervised reconstruction in train_forward (1-4).
    decode_steps: default sampling steps of `decode` (1-4).
    dtype, remat, scan_layers, attention_impl: common options.
  """

  def __init__(self, *, image_size: int = 1024, patch_size: int = 32, enc_width: int = 1024,
               enc_depth: int = 24, enc_heads: int = 16, num_latent_tokens: int = 256,
               token_size: int = 16, quantizer: str = "vq", codebook_size: int = 16384,
               use_l2_norm: bool = True, commitment_cost: float = 0.25,
               fsq_levels: Sequence[int] = (), quantizer_options: dict | None = None,
               use_vae: bool = True, vae_channels: Sequence[int] = (128, 256, 512, 512),
               vae_latent_channels: int = 4, vae_layers_per_block: int = 2,
               vae_norm_groups: int = 32, vae_mid_attention: bool = True,
               vae_scaling_factor: float = 0.18215, vae_checkpoint: str = "",
               latent_patch_size: int = 4,
               dec_width: int = 1024, dec_depth: int = 24, dec_heads: int = 16,
               prediction: str = "epsilon", num_train_timesteps: int = 1000,
               beta_start: float = 0.00085, beta_end: float = 0.012, num_origin_steps: int = 50,
               sigma_data: float = consistency.SIGMA_DATA,
               timestep_scaling: float = consistency.TIMESTEP_SCALING, huber_c: float = 0.001,
               consistency_weight: float = 1.0, target_decay: float = 0.95, train_steps: int = 1,
               decode_steps: int = 1, dtype: Any = jnp.float32, remat: Any = "none",
               scan_layers: bool = False, attention_impl: str | None = None, rngs: nnx.Rngs):
    for name, value in (("image_size", image_size), ("patch_size", patch_size),
                        ("num_latent_tokens", num_latent_tokens), ("token_size", token_size),
                        ("latent_patch_size", latent_patch_size)):
      base.check_positive_int(name, value)
    if image_size % patch_size:
      raise ValueError(f"image_size ({image_size}) must be divisible by patch_size ({patch_size})")
    if prediction not in PREDICTIONS:
      raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
    if not 0.0 <= target_decay < 1.0:
      raise ValueError(f"target_decay must lie in [0, 1), got {target_decay}")
    if huber_c <= 0 or consistency_weight < 0:
      raise ValueError(f"huber_c must be > 0 and consistency_weight >= 0, got {huber_c}, "
                       f"{consistency_weight}")
    for name, value in (("train_steps", train_steps), ("decode_steps", decode_steps)):
      if not 1 <= base.check_positive_int(name, value) <= 4:
        raise ValueError(f"{name} must be in [1, 4] (Layton decodes in 1-4 consistency steps), got "
                         f"{value}")
    dtype = compute_dtype(dtype)
    self.image_size, self.num_latent_tokens, self.token_size = image_size, num_latent_tokens, token_size
    self.quantizer, self.dtype, self.prediction = quantizer, dtype, prediction
    self.use_vae, self.scaling_factor = use_vae, float(vae_scaling_factor)
    self.sigma_data, self.timestep_scaling = float(sigma_data), float(timestep_scaling)
    self.huber_c, self.consistency_weight = float(huber_c), float(consistency_weight)
    self.target_decay, self.train_steps, self.decode_steps = float(target_decay), train_steps, decode_steps
    self.num_train_timesteps, self.num_origin_steps = num_train_timesteps, num_origin_steps
    self.beta_start, self.beta_end = float(beta_start), float(beta_end)
    consistency.scaled_linear_alphas_cumprod(num_train_timesteps, beta_start, beta_end)  # validates
    consistency.origin_timesteps(num_train_timesteps, num_origin_steps)
    stack = dict(remat=remat, scan_layers=scan_layers, attention_impl=attention_impl)
    self.encoder = TiTokEncoder(
        image_size=image_size, patch_size=patch_size, width=enc_width, depth=enc_depth,
        num_heads=enc_heads, num_latent_tokens=num_latent_tokens, out_dim=token_size,
        legacy_reshape=False, dtype=dtype, stack=stack, rngs=rngs)
    self.latent_tokens = nnx.Param(logical_init(scaled_normal(enc_width), None, "embed")(
        rngs.params(), (num_latent_tokens, enc_width), jnp.float32))
    self.bottleneck = bottleneck_lib.Bottleneck.create(
        quantizer, token_size, codebook_size=codebook_size, levels=fsq_levels, cosine=use_l2_norm,
        commitment_cost=commitment_cost, options=quantizer_options)
    self.codebook_size = self.bottleneck.codebook_size
    for name, var in self.bottleneck.make_variables(rngs).items():
      setattr(self, name, var)
    if use_vae:
      self.vae = flextok_vae.FlexTokVAE(
          channels=tuple(vae_channels), latent_channels=vae_latent_channels,
          layers_per_block=vae_layers_per_block, norm_groups=vae_norm_groups,
          mid_attention=vae_mid_attention, attention_impl=attention_impl, dtype=dtype, rngs=rngs)
      factor, self.latent_channels = self.vae.downsample_factor, vae_latent_channels
      if vae_checkpoint:  # the pretrained LDM VAE replaces the random initialisation
        from jaxtok.convert import ldm_vae  # pylint: disable=g-import-not-at-top
        ldm_vae.load_into(self.vae, vae_checkpoint, dict(
            channels=list(vae_channels), latent_channels=vae_latent_channels,
            layers_per_block=vae_layers_per_block, norm_groups=vae_norm_groups,
            mid_attention=vae_mid_attention, scaling_factor=vae_scaling_factor))
    elif vae_checkpoint:
      raise ValueError(f"vae_checkpoint={vae_checkpoint!r} needs use_vae=True")
    else:
      self.vae, factor, self.latent_channels = None, 1, 3
    if image_size % factor:
      raise ValueError(f"image_size {image_size} must be divisible by the VAE factor {factor}")
    self.latent_size = image_size // factor
    self.decoder = LaytonDecoder(
        latent_size=self.latent_size, latent_channels=self.latent_channels,
        patch_size=latent_patch_size, token_size=token_size, num_tokens=num_latent_tokens,
        width=dec_width, depth=dec_depth, num_heads=dec_heads, dtype=dtype, remat=remat,
        scan_layers=scan_layers, attention_impl=attention_impl, rngs=rngs)
    # theta-: starts equal to theta (LCM initialises the target from the online network).
    self.target_decoder = nnx.clone(self.decoder)
    retype_params(self.target_decoder, ConsistencyTarget)

  # ---- schedule tables (numpy constants of the trace; a module attribute would enter the graphdef)

  @property
  def alphas_cumprod(self):
    """abar float32 [T] of the DDPM schedule."""
    return consistency.scaled_linear_alphas_cumprod(self.num_train_timesteps, self.beta_start,
                                                    self.beta_end)

  @property
  def origin(self):
    """The consistency solver grid int32 [N]."""
    return consistency.origin_timesteps(self.num_train_timesteps, self.num_origin_steps)

  # ---- latents

  def images_to_latents(self, images: jax.Array) -> jax.Array:
    """images [B, S, S, 3] in [0, 1] -> scaled VAE posterior means float32 [B, h, w, C] (no gradient:
    the VAE is frozen)."""
    x = images.astype(jnp.float32) * 2.0 - 1.0
    if self.vae is not None:
      x = self._frozen_vae().encode(x.astype(self.dtype))[0].astype(jnp.float32) * self.scaling_factor
    return jax.lax.stop_gradient(x)

  def _frozen_vae(self) -> nnx.Module:
    """The VAE with its weights behind stop_gradient: gradients reach the latents, never the VAE
    (with no weight decay on ^vae/, configs.layton, AdamW then leaves it unchanged)."""
    graphdef, state = nnx.split(self.vae)
    return nnx.merge(graphdef, jax.tree.map(jax.lax.stop_gradient, state))

  def latents_to_images(self, latents: jax.Array) -> jax.Array:
    """latents [B, h, w, C] -> images float32 [B, S, S, 3] clipped to [0, 1] (differentiable)."""
    x = latents if self.vae is None else self._frozen_vae().decode(
        (latents / self.scaling_factor).astype(self.dtype))
    return jnp.clip((x.astype(jnp.float32) + 1.0) * 0.5, 0.0, 1.0)

  # ---- the consistency function

  def consistency_fn(self, x_t: jax.Array, t: jax.Array, codes: jax.Array, *,
                     target: bool = False) -> jax.Array:
    """f(x_t, t, codes) float32 [B, h, w, C] (module docstring); target=True uses theta-."""
    net = self.target_decoder if target else self.decoder
    out = net(x_t, t, codes)
    x_t = x_t.astype(jnp.float32)
    if self.prediction == "epsilon":
      a = jnp.asarray(self.alphas_cumprod)[t][:, None, None, None]
      x0 = (x_t - jnp.sqrt(1.0 - a) * out) / jnp.sqrt(a)
    else:
      x0 = out
    c_skip, c_out = consistency.boundary_coefficients(
        t, sigma_data=self.sigma_data, timestep_scaling=self.timestep_scaling)
    return c_skip[:, None, None, None] * x_t + c_out[:, None, None, None] * x0

  def sample_latents(self, codes: jax.Array, noise: jax.Array, rng: jax.Array,
                     num_steps: int) -> jax.Array:
    """Multistep consistency sampling from x_T = noise [B, h, w, C] -> latents float32."""
    fn = lambda x, t: self.consistency_fn(x, t, codes)
    steps = consistency.inference_timesteps(num_steps, self.num_train_timesteps, self.num_origin_steps)
    return consistency.sample(fn, noise, steps, rng, self.alphas_cumprod)

  # ---- the tokenizer contract

  def tokens_to_codes(self, tokens: jax.Array) -> jax.Array:
    """tokens int32 [B, K, *token_shape] -> codes float32 [B, K, D]."""
    return self.bottleneck.indices_to_codes(bottleneck_lib.read(self, self.bottleneck), tokens)

  def encode(self, images: jax.Array, *, num_tokens: int | None = None,
             rng: jax.Array | None = None, train: bool = False) -> EncodeOutput:
    """images float [B, S, S, 3] in [0, 1] -> EncodeOutput(tokens int32 [B, K'], codes float32
    [B, K', D], losses, metrics); K' = num_tokens (default K)."""
    check_images(images, self.image_size)
    num_tokens = check_num_tokens(num_tokens, self.num_latent_tokens)
    z = self.encoder(images, self.latent_tokens.get_value())
    tokens, codes, losses, metrics = self.bottleneck.quantize(
        bottleneck_lib.read(self, self.bottleneck), z, rng=rng, train=train)
    if num_tokens is not None:
      tokens, codes = tokens[:, :num_tokens], codes[:, :num_tokens]
    return EncodeOutput(tokens=tokens, codes=codes, losses=losses, metrics=metrics)

  def decode(self, tokens: jax.Array, *, rng: jax.Array | None = None, train: bool = False,
             num_steps: int | None = None, noise: jax.Array | None = None) -> jax.Array:
    """tokens int32 [B, K] -> images float32 [B, S, S, 3] in [0, 1].

    num_steps (static, 1-4; default `decode_steps`) consistency steps from x_T = `noise`
    [B, h, w, C] when given, else N(0, I) drawn from `rng` (None: key 0, deterministic); the
    re-noising draws use rng too. All K tokens are needed (the decoder has no prefix training).
    """
    del train
    self.bottleneck.check_tokens(tokens, self.num_latent_tokens)
    if tokens.shape[1] != self.num_latent_tokens:
      raise ValueError(f"tokens must hold all {self.num_latent_tokens} tokens (Layton decodes no "
                       f"prefix), got shape {tuple(tokens.shape)}")
    num_steps = self.decode_steps if num_steps is None else num_steps
    rng = jax.random.key(0) if rng is None else rng
    k_noise, k_steps = jax.random.split(rng)
    shape = (tokens.shape[0], self.latent_size, self.latent_size, self.latent_channels)
    if noise is None:
      noise = jax.random.normal(k_noise, shape, jnp.float32)
    else:
      base.check_float_array("noise", noise)
      if tuple(noise.shape) != shape:
        raise ValueError(f"noise must have shape {shape}, got {tuple(noise.shape)}")
    latents = self.sample_latents(self.tokens_to_codes(tokens), noise.astype(jnp.float32), k_steps,
                                  num_steps)
    return self.latents_to_images(latents)

  def consistency_loss(self, x0: jax.Array, codes: jax.Array, rng: jax.Array):
    """The CT loss (module docstring) of latents x0 [B, h, w, C] -> (loss float32 [], metrics)."""
    b = x0.shape[0]
    k_n, k_eps = jax.random.split(rng)
    skip = self.num_train_timesteps // self.num_origin_steps
    t_hi = jnp.asarray(self.origin)[jax.random.randint(k_n, (b,), 0, len(self.origin))]
    t_lo = jnp.maximum(t_hi - skip, 0)
    eps = jax.random.normal(k_eps, x0.shape, jnp.float32)
    x_hi = consistency.add_noise(x0, eps, t_hi, self.alphas_cumprod)
    x_lo = consistency.add_noise(x0, eps, t_lo, self.alphas_cumprod)
    pred = self.consistency_fn(x_hi, t_hi, codes)
    tgt = jax.lax.stop_gradient(
        self.consistency_fn(x_lo, t_lo, jax.lax.stop_gradient(codes), target=True))
    loss = jnp.mean(pseudo_huber(pred - tgt, self.huber_c))
    return loss, {"t_hi": jnp.mean(t_hi.astype(jnp.float32))}

  def update_target(self) -> None:
    """theta- <- mu theta- + (1 - mu) sg(theta), written into the ConsistencyTarget variables."""
    online = nnx.state(self.decoder, nnx.Param).to_pure_dict()
    state = nnx.state(self.target_decoder, ConsistencyTarget)
    mu = self.target_decay
    new = jax.tree.map(lambda t, p: mu * t + (1.0 - mu) * jax.lax.stop_gradient(p),
                       state.to_pure_dict(), online)
    state.replace_by_pure_dict(new)
    nnx.update(self.target_decoder, state)

  def train_forward(self, images: jax.Array, *, rng: jax.Array, step: int | jax.Array | None = None,
                    target: str = "pixels", perturb: dict | None = None,
                    num_tokens: int | None = None) -> TrainOutput:
    """One training pass (module docstring): TrainOutput(recon [B, S, S, 3] float32 from
    `train_steps` consistency steps, losses {"consistency", quantizer losses}, metrics).

    Also updates the target network theta- (model state). target must be "pixels"; perturb and
    num_tokens (prefix training) are not supported (ValueError).
    """
    del step
    check_target(target, proxy_head=False, model="Layton")
    if perturb is not None:
      raise ValueError(f"Layton does not support RobusTok perturbation, got perturb={perturb!r}")
    if num_tokens is not None:
      raise ValueError(f"Layton decodes all K tokens; num_tokens must be None, got {num_tokens!r}")
    check_images(images, self.image_size)
    k_q, k_ct, k_noise, k_steps = jax.random.split(rng, 4)
    x0 = self.images_to_latents(images)
    z = self.encoder(images, self.latent_tokens.get_value())
    _, codes, losses, metrics, new_values = self.bottleneck.train_quantize(
        bottleneck_lib.read(self, self.bottleneck), z, k_q)
    bottleneck_lib.write(self, new_values)
    metrics = dict(metrics)
    ct, ct_metrics = self.consistency_loss(x0, codes, k_ct)
    metrics.update(ct_metrics)
    noise = jax.random.normal(k_noise, x0.shape, jnp.float32)
    recon = self.latents_to_images(self.sample_latents(codes, noise, k_steps, self.train_steps))
    self.update_target()
    losses = dict(losses)
    losses["consistency"] = self.consistency_weight * ct
    return TrainOutput(recon=recon, losses=losses, metrics=metrics)


_FIELDS = ("image_size", "patch_size", "enc_width", "enc_depth", "enc_heads", "num_latent_tokens",
           "token_size", "quantizer", "codebook_size", "use_l2_norm", "commitment_cost", "fsq_levels",
           "quantizer_options", "use_vae", "vae_channels", "vae_latent_channels",
           "vae_layers_per_block", "vae_norm_groups", "vae_mid_attention", "vae_scaling_factor",
           "vae_checkpoint", "latent_patch_size", "dec_width", "dec_depth", "dec_heads", "prediction",
           "num_train_timesteps", "beta_start", "beta_end", "num_origin_steps", "sigma_data",
           "timestep_scaling", "huber_c", "consistency_weight", "target_decay", "train_steps",
           "decode_steps")


def make_model(cfg: Mapping[str, Any], *, rngs: nnx.Rngs) -> Layton:
  """A Layton from plain fields (Layton's Args); `name` is accepted; common options dtype, remat,
  scan_layers, attention_impl. Any other key raises ValueError listing the valid ones."""
  kwargs = model_kwargs(as_dict(cfg), _FIELDS, model="Layton", cls=Layton)
  for key in ("fsq_levels", "vae_channels"):
    if key in kwargs:
      kwargs[key] = tuple(int(v) for v in kwargs[key])
  return Layton(**kwargs, rngs=rngs)
