"""Classifier-free guidance formulas, each named for the convention it follows.

Shapes: any; ``cond`` and ``uncond`` broadcast together. Math in float32.
"""
import jax.numpy as jnp


def _f32(x):
  return jnp.asarray(x, jnp.float32)


def cfg_uncond_base(cond, uncond, scale):
  """``u + s (c - u)`` (LlamaGen / RAR / MAR / FlexTok). Neutral scale: 1."""
  c, u = _f32(cond), _f32(uncond)
  return u + scale * (c - u)


def cfg_cond_base(cond, uncond, scale):
  """``c + s (c - u)`` (1d-tokenizer MaskGIT). Neutral scale: 0."""
  c, u = _f32(cond), _f32(uncond)
  return c + scale * (c - u)


def cfg_instella(cond, uncond, scale):
  """``(1 + w) c - w u`` (Instella). Neutral scale: 0."""
  c, u = _f32(cond), _f32(uncond)
  return (1.0 + scale) * c - scale * u
