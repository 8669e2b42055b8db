"""Prefix lengths of ordered 1D tokenizers: which leading tokens a training step keeps.

FlexTok's nested dropout and One-D-Piece's tail drop both train a decoder on the first k tokens only,
k drawn per step. `sample_keep_k` draws k, `nested_dropout` replaces the tail by one token.

Modes (the release's `MaskedNestedDropout` names; One-D-Piece's `tail_drop_mode`):
  uniform       k uniform over 1..K
  pow2          k uniform over {1, 2, 4, ..., K}              (K a power of two)
  uniform_pow2  k uniform over 1..K, rounded up to a power of 2 (K a power of two)

Dimension names: B batch, K max tokens, W width.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

MODES = ("uniform", "pow2", "uniform_pow2")


def check_mode(mode: str, max_k: int, *, name: str = "mode", count: str = "max_k") -> None:
  """Raises ValueError (naming `name` / `count`) unless mode is one of MODES and fits max_k."""
  if mode not in MODES:
    raise ValueError(f"{name} must be one of {MODES}, got {mode!r}")
  if mode != "uniform" and max_k & (max_k - 1):
    raise ValueError(f"{name} {mode!r} needs a power-of-two token count: {count} must be a power "
                     f"of two, got {max_k}")


def sample_keep_k(rng: jax.Array, batch: int, max_k: int, mode: str = "uniform") -> jax.Array:
  """Kept lengths, int32 [batch] in [1, max_k], drawn by `mode` (see the module docstring)."""
  check_mode(mode, max_k, name="nested dropout mode")
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
