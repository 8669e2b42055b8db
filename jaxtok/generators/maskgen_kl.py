"""MaskGen-KL (Kim et al. 2025, arXiv 2501.07730): text-to-image masked generation over TA-TiTok's
continuous (VAE / KL) tokens, the MaskGen-VQ backbone with MAR's per-token diffusion head.

bytedance/1d-tokenizer `modeling/maskgen.py` `MaskGen_KL` (checked at its HEAD), composed from the
shared parts:

  latents x:    TA-TiTok VAE tokens [B, K, D] times scale_factor (0.7525; training data may hold the
                posterior moments [B, K, 2D], sampled here as the release's pre-tokenized data)
  condition:    MaskGen-VQ's text handling: text_emb(CLIP penultimate [B, T, C]) -> [B, T, W];
                pooled p = text_pooled_emb(concat(CLIP pooled [B, C], micro [B, A])) -> [B, W],
                micro = this variant's own sinusoid of 100 * aesthetic score: interleaved
                (sin, cos) at 10000^(-2i/A) (`aesthetic_embedding`, unlike MaskGen-VQ's).
  backbone z:   LayerNorm(z_proj(x)) (affine, eps 1e-6), the mask token at unknown positions, +
                pos_embed; `maskgen.JointBlock` x L (MM-DiT, last block context-pre-only);
                AdaLayerNormContinuous from p; + diffusion_pos_embed -> z [B, K, W].
  head:         `heads.FlowHead` in MAR's SimpleMLPAdaLN form (DiT time MLP on a 256-d embedding
                of the integer step, 2D outputs: eps | learned-range variance), run as the
                improved-DDPM `samplers.ddpm` (cosine, 1000 steps; sampling respaced to 100).

Training (`loss`): one u ~ U(0, 1) per batch, ceil(K arccos(u) / (pi/2)) positions masked in a
random order per sample (the release's `random_masking`); the hybrid diffusion loss (mse + vb) on
every token repeated diffusion_batch_mul (4) times, averaged over the masked positions only; the
caption replaced by the empty caption's features with probability text_drop_prob (0.1,
`maskgen.drop_text`). Sampling (`sample`): `samplers.mar`'s loop (random order, cosine counts, 32
iterations, linear CFG 3.0 with the release's (N - mask_len) / N ratio) with the DDPM head as its
`head_sampler` (temperature 1 on the per-step noise); the result is divided by scale_factor.

The condition dict is MaskGen-VQ's: {"text": [B, T, C], "pooled": [B, C], "aesthetic": [B]
(optional), "null_text", "null_pooled" (training only)}.

Dimension names: B batch, K tokens, D token dimension, W width, T text length, C text width, A
micro-condition width, L depth.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxtok.generators import maskgen
from jaxtok.generators.heads import FlowHead
from jaxtok.nn.dense import Dense
from jaxtok.nn.embeddings import sincos_1d
from jaxtok.nn.norm import Norm
from jaxtok.nn.options import model_kwargs
from jaxtok.samplers import ddpm
from jaxtok.sharding import logical_init
from jaxtok.tokenizers import vae as vae_lib

_EPS = 1e-6
_XAVIER = nnx.initializers.xavier_uniform()


def aesthetic_embedding(score: jax.Array, dim: int) -> jax.Array:
  """MaskGen-KL's micro-condition float32 [B, dim] of aesthetic scores [B]: position 2i holds
  sin(100 s w_i), 2i + 1 cos(100 s w_i), w_i = 10000^(-2i/dim) (its `get_sinusoidal_encoding`)."""
  emb = sincos_1d(jnp.asarray(score, jnp.float32) * 100.0, dim)  # [sin..., cos...]
  return jnp.stack(jnp.split(emb, 2, axis=-1), axis=-1).reshape(emb.shape)


class MaskGenKL(nnx.Module):
  """Per-token conditions z [B, K, W] of masked latents (`condition`) and their DDPM head (`head`).

  Args:
    token_dim: D; seq_len: K; width, depth, heads: W, L, head count of the MM-DiT backbone.
    text_dim: C; micro_condition (aesthetic score), micro_condition_dim: A (even).
    text_drop_prob: caption dropout of training; sample_aesthetic_score: the score used when a
      condition has none (the released infer configs' 6.5).
    scale_factor: latents are multiplied by it before the model (the release's 0.7525).
    head_width, head_depth: the diffusion MLP (the release's diffloss_w = W, diffloss_d = 8).
    diffusion_batch_mul: noise draws per token in the loss; diffusion_steps: T of the schedule.
    dtype, attention_impl: `nn.options` (remat and scan_layers are refused: the blocks differ).
  """

  def __init__(self, *, token_dim: int = 16, seq_len: int = 32, width: int = 1024, depth: int = 16,
               heads: int = 16, text_dim: int = 768, micro_condition: bool = True,
               micro_condition_dim: int = 256, text_drop_prob: float = 0.1,
               sample_aesthetic_score: float = 6.5, scale_factor: float = 0.7525,
               head_width: int = 1024, head_depth: int = 8, diffusion_batch_mul: int = 4,
               diffusion_steps: int = 1000, dtype: Any = jnp.float32, remat: Any = "none",
               scan_layers: bool = False, attention_impl: Any = None, rngs: nnx.Rngs):
    for name, v in (("token_dim", token_dim), ("seq_len", seq_len), ("width", width),
                    ("depth", depth), ("heads", heads), ("text_dim", text_dim),
                    ("head_width", head_width), ("head_depth", head_depth),
                    ("diffusion_batch_mul", diffusion_batch_mul),
                    ("diffusion_steps", diffusion_steps)):
      if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"MaskGen-KL {name} must be an int >= 1, got {v!r}")
    if micro_condition and micro_condition_dim % 2:
      raise ValueError(f"micro_condition_dim must be even (interleaved sin/cos), got "
                       f"{micro_condition_dim}")
    if scan_layers or remat not in ("none", False):
      raise ValueError(f"MaskGen-KL runs unrolled blocks without remat (its last block differs), "
                       f"got scan_layers={scan_layers!r}, remat={remat!r}")
    if not 0.0 <= text_drop_prob < 1.0:
      raise ValueError(f"text_drop_prob must be in [0, 1), got {text_drop_prob}")
    if not scale_factor > 0:
      raise ValueError(f"scale_factor must be > 0, got {scale_factor}")
    self.token_dim, self.seq_len, self.text_dim = token_dim, seq_len, text_dim
    self.micro_condition, self.micro_condition_dim = bool(micro_condition), micro_condition_dim
    self.text_drop_prob, self.sample_aesthetic_score = float(text_drop_prob), float(sample_aesthetic_score)
    self.scale_factor, self.diffusion_batch_mul = float(scale_factor), diffusion_batch_mul
    self.diffusion_steps, self.dtype = diffusion_steps, dtype
    dense = lambda i, o, **kw: Dense(i, o, ("embed", "mlp"), dtype=dtype, kernel_init=_XAVIER,
                                     rngs=rngs, **kw)
    self.text_emb = dense(text_dim, width)
    self.text_pooled_emb = dense(text_dim + (micro_condition_dim if micro_condition else 0), width)
    self.z_proj = dense(token_dim, width)
    self.z_proj_ln = Norm(width, eps=_EPS, dtype=dtype, rngs=rngs)
    self.blocks = nnx.List([maskgen.JointBlock(width, heads, context_pre_only=i == depth - 1,
                                               dtype=dtype, attention_impl=attention_impl,
                                               rngs=rngs) for i in range(depth)])
    self.norm = Norm(width, eps=_EPS, affine=False, dtype=dtype, rngs=rngs)
    self.norm_ada = dense(width, 2 * width)
    normal = lambda *names: logical_init(nnx.initializers.normal(0.02), *names)
    self.mask_token = nnx.Param(normal("embed")(rngs.params(), (width,), jnp.float32))
    self.pos_embed = nnx.Param(normal(None, "embed")(rngs.params(), (seq_len, width), jnp.float32))
    self.diffusion_pos_embed = nnx.Param(normal(None, "embed")(rngs.params(), (seq_len, width),
                                                               jnp.float32))
    self.head = FlowHead(token_dim=token_dim, cond_dim=width, width=head_width, depth=head_depth,
                         time_freq=256, time_scale=1.0, out_dim=2 * token_dim, rngs=rngs)

  def diffusion(self, respacing: str | None = None) -> ddpm.Diffusion:
    """The head's DDPM (cosine, diffusion_steps), respaced for sampling (e.g. "100")."""
    return ddpm.make(self.diffusion_steps, respacing)

  def head_fn(self, x_t: jax.Array, t: jax.Array, z: jax.Array) -> jax.Array:
    """Head output float32 [M, 2D] (eps | variance value) of x_t [M, D] at original steps t [M]."""
    return self.head(x_t, t, z)

  def pooled(self, cond: Mapping[str, jax.Array]) -> jax.Array:
    """p [B, W] of cond["pooled"] [B, C] (+ the aesthetic micro-condition)."""
    return self.text_pooled_emb(maskgen.pooled_with_micro_condition(self, cond,
                                                                    aesthetic_embedding))

  def condition(self, tokens: jax.Array, mask: jax.Array, cond: Mapping[str, jax.Array]) -> jax.Array:
    """z float32 [B, K, W] for scaled latents tokens [B, K, D] (values at mask ignored), mask bool
    [B, K] (True = unknown) and the text condition (the release's forward_mae_decoder)."""
    b, k, d = tokens.shape
    if (k, d) != (self.seq_len, self.token_dim):
      raise ValueError(f"tokens must be [B, seq_len={self.seq_len}, token_dim={self.token_dim}], "
                       f"got {tuple(tokens.shape)}")
    if mask.shape != (b, k):
      raise ValueError(f"mask must be [B={b}, K={k}], got {tuple(mask.shape)}")
    text = cond["text"]
    if text.ndim != 3 or text.shape[0] != b or text.shape[-1] != self.text_dim:
      raise ValueError(f"cond['text'] must be [B={b}, T, text_dim={self.text_dim}], got "
                       f"{tuple(text.shape)}")
    x = self.z_proj_ln(self.z_proj(tokens.astype(jnp.float32)))
    x = jnp.where(mask[..., None], self.mask_token.get_value().astype(x.dtype), x)
    x = x + self.pos_embed.get_value().astype(x.dtype)
    c = self.text_emb(jnp.asarray(text, jnp.float32))
    p = self.pooled(cond)
    for blk in self.blocks:
      x, c = blk(x, c, p)
    scale, shift = jnp.split(self.norm_ada(jax.nn.silu(p)), 2, axis=-1)
    x = maskgen._modulated(self.norm, x, shift[:, None], scale[:, None])  # pylint: disable=protected-access
    return (x + self.diffusion_pos_embed.get_value()).astype(jnp.float32)

  def latents(self, tokens: jax.Array, rng: jax.Array) -> jax.Array:
    """Scaled latents float32 [B, K, D] of VAE tokens [B, K, D], or of posterior moments
    [B, K, 2D] (mean | logvar, sampled with rng as the release does)."""
    d = tokens.shape[-1]
    if d == 2 * self.token_dim:
      mean, logvar = vae_lib.split_moments(tokens)
      tokens = vae_lib.sample(mean, logvar, rng)
    elif d != self.token_dim:
      raise ValueError(f"tokens must be [B, K, token_dim={self.token_dim}] latents or [B, K, "
                       f"{2 * self.token_dim}] posterior moments, got {tuple(tokens.shape)}")
    return tokens.astype(jnp.float32) * self.scale_factor


def training_mask(rng: jax.Array, batch: int, length: int) -> jax.Array:
  """The release's training mask [B, N] bool: one u ~ U(0, 1) for the batch, n = ceil(N r) with
  r = clip(arccos(u) / (pi/2), 1e-6, 1), the first n positions of a random order per sample."""
  ru, rp = jax.random.split(rng)
  ratio = jnp.clip(jnp.arccos(jax.random.uniform(ru, ())) / (jnp.pi / 2), 1e-6, 1.0)
  count = jnp.ceil(length * ratio).astype(jnp.int32)
  ranks = jnp.argsort(jnp.argsort(jax.random.uniform(rp, (batch, length)), axis=1), axis=1)
  return ranks < count


def _condition_of(model: MaskGenKL, labels, rng, train: bool) -> dict:
  if train and model.text_drop_prob > 0:
    return maskgen.drop_text(labels, model.text_drop_prob, rng)
  return {k: v for k, v in labels.items() if not k.startswith("null_")}


def loss(model: MaskGenKL, tokens: jax.Array, labels, *, rng: jax.Array, train: bool = True,
         step=None):
  """The release's loss and metrics {loss, mse, vb, mask_ratio}: tokens float [B, K, D] latents
  (or [B, K, 2D] moments), labels the text-condition dict (module docstring)."""
  del step
  r_mask, r_drop, r_post, r_diff = jax.random.split(rng, 4)
  cond = _condition_of(model, labels, r_drop, train)
  x = model.latents(tokens, r_post)
  b, k, d = x.shape
  mask = training_mask(r_mask, b, k)
  z = model.condition(x, mask, cond)
  mul = model.diffusion_batch_mul
  # Every token, repeated mul times (static shapes under jit); only masked rows are weighted.
  terms = ddpm.loss_terms(model.head_fn, model.diffusion(), jnp.tile(x.reshape(b * k, d), (mul, 1)),
                          jnp.tile(z.reshape(b * k, -1), (mul, 1)), r_diff)
  w = jnp.tile(mask.reshape(-1), mul).astype(jnp.float32)
  mean = lambda v: jnp.sum(v * w) / jnp.maximum(w.sum(), 1.0)
  value = mean(terms["loss"])
  return value, {"loss": value, "mse": mean(terms["mse"]), "vb": mean(terms["vb"]),
                 "mask_ratio": mask.mean()}


# The released sampling (configs/infer/MaskGen/maskgen_kl_{l,xl}.yaml and README_MaskGen's call:
# num_iter 32, cfg 3.0 "linear", temperature 1.0, aesthetic score 6.5; DiffLoss's "100" steps).
SAMPLING = dict(steps=32, cfg_scale=3.0, cfg_schedule="linear", temperature=1.0,
                head_respacing="100")


def sample(model: MaskGenKL, rng: jax.Array, cond: Mapping[str, jax.Array],
           null: Mapping[str, jax.Array] | None = None, **settings: Any) -> jax.Array:
  """VAE tokens float32 [B, K, D] (unscaled: TA-TiTok decodes them) for the captions' cond, by
  `samplers.mar` with the DDPM head; `SAMPLING` overridden by settings (steps, cfg_scale,
  cfg_schedule "linear" | "constant", temperature, head_respacing). null: the empty caption's
  {"text" [1 or B, T, C], "pooled" [1 or B, C]}; guidance runs when given and cfg_scale != 1
  (the release's test)."""
  from jaxtok.samplers import mar  # pylint: disable=g-import-not-at-top
  unknown = sorted(set(settings) - set(SAMPLING))
  if unknown:
    raise ValueError(f"unknown MaskGen-KL sampling setting(s) {unknown}; valid: {sorted(SAMPLING)}")
  s = {**SAMPLING, **settings}
  if s["cfg_schedule"] not in ("linear", "constant"):
    raise ValueError(f"cfg_schedule must be 'linear' or 'constant' (the release's), got "
                     f"{s['cfg_schedule']!r}")
  b = cond["text"].shape[0]
  cond = dict(cond)
  if model.micro_condition and cond.get("aesthetic") is None:
    cond["aesthetic"] = jnp.full((b,), model.sample_aesthetic_score, jnp.float32)
  uncond = None
  if null is not None and float(s["cfg_scale"]) != 1.0:
    uncond = {k: jnp.broadcast_to(null[k], (b,) + tuple(null[k].shape[1:])) for k in ("text", "pooled")}
    if "aesthetic" in cond:
      uncond["aesthetic"] = cond["aesthetic"]
  diffusion = model.diffusion(s["head_respacing"])

  def head_sampler(key, zc, zu, scale):
    return ddpm.sample(model.head_fn, diffusion, zc, key, token_dim=model.token_dim,
                       temperature=s["temperature"], z_uncond=zu, cfg_scale=scale)

  out = mar.sample(rng, model.condition, None, batch=b, num_tokens=model.seq_len,
                   token_dim=model.token_dim, steps=s["steps"], head_steps=1, cond=cond,
                   uncond=uncond, cfg_scale=s["cfg_scale"], cfg_schedule=s["cfg_schedule"],
                   temperature=s["temperature"], head_sampler=head_sampler, cfg_min_masked=1)
  return out.tokens / model.scale_factor


FIELDS = ("token_dim", "seq_len", "width", "depth", "heads", "text_dim", "micro_condition",
          "micro_condition_dim", "text_drop_prob", "sample_aesthetic_score", "scale_factor",
          "head_width", "head_depth", "diffusion_batch_mul", "diffusion_steps")


def make_model(cfg: Mapping, *, rngs: nnx.Rngs) -> MaskGenKL:
  """A MaskGenKL from its constructor's fields plus `nn.options.COMMON` and `name`; any other key
  raises ValueError."""
  return MaskGenKL(**model_kwargs(cfg, FIELDS, model="maskgen_kl", cls=MaskGenKL), rngs=rngs)


text_condition = maskgen.text_condition
