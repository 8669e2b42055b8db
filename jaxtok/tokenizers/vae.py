"""The continuous (KL) variant of the 1D tokenizer: a TiTok whose bottleneck is a diagonal Gaussian.

The TiTok encoder emits 2*D channels per token, split into mean and log-variance (clamped to
[-30, 20], as in the reference's `DiagonalGaussianDistribution`). Training samples
z = mean + exp(logvar / 2) * eps and adds kl_weight * KL(q || N(0, I)), the KL summed over a
token's dimensions and its tokens and averaged over the batch (the reference's `kl().sum() / B`).
At inference `encode` returns the mode (the mean) when the model's `vae_inference` is "mode" (the
default, deterministic) or a sample when it is "sample" (the reference demo decodes a sample; an
rng is then required). Tokens are float [B, K, D].

Config name "vae": `make_model(cfg)` builds `titok.TiTok(quantizer="vae", ...)`.

The Gaussian posterior functions here (`split_moments`, `sample`, `kl_divergence`) are also those of
FlexTok's VAE (`flextok_vae`).

Dimension names: B batch, K tokens, D token dimension.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0


def clip_logvar(logvar: jax.Array) -> jax.Array:
  """logvar float32 clamped to [LOGVAR_MIN, LOGVAR_MAX] = [-30, 20] (diffusers' clamp)."""
  return jnp.clip(logvar.astype(jnp.float32), LOGVAR_MIN, LOGVAR_MAX)


def split_moments(moments: jax.Array) -> tuple[jax.Array, jax.Array]:
  """[..., 2D] -> mean [..., D], clamped logvar [..., D], both float32 (first half is the mean)."""
  if moments.shape[-1] % 2:
    raise ValueError(f"moments must have an even last dimension (mean and logvar), got shape "
                     f"{tuple(moments.shape)}")
  mean, logvar = jnp.split(moments.astype(jnp.float32), 2, axis=-1)
  return mean, clip_logvar(logvar)


def sample(mean: jax.Array, logvar: jax.Array, rng: jax.Array) -> jax.Array:
  """mean + exp(logvar / 2) * N(0, 1) with logvar clamped, float32 with mean's shape
  (reparameterised: differentiable in mean and logvar)."""
  eps = jax.random.normal(rng, mean.shape, jnp.float32)
  return mean.astype(jnp.float32) + jnp.exp(0.5 * clip_logvar(logvar)) * eps


def kl_divergence(mean: jax.Array, logvar: jax.Array) -> jax.Array:
  """KL(N(mean, exp(logvar)) || N(0, I)) per batch element, logvar clamped: 0.5 * sum(mean^2 + var
  - 1 - logvar) over all axes but the first. Returns [B] float32."""
  mean, logvar = mean.astype(jnp.float32), clip_logvar(logvar)
  kl = 0.5 * (jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar)
  return jnp.sum(kl.reshape(kl.shape[0], -1), axis=-1)


def make_model(cfg: Mapping[str, Any], *, rngs: nnx.Rngs):
  """A continuous 1D tokenizer: `titok.make_model` with quantizer "vae"."""
  from jaxtok.tokenizers import titok  # titok imports this module for the Gaussian functions.
  cfg = dict(cfg)
  cfg["quantizer"] = "vae"
  return titok.make_model(cfg, rngs=rngs)
