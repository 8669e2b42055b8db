"""Rotary position embedding (RoPE) of queries and keys, over a 1D sequence or a 2D grid.

Half-split layout (GPT-NeoX / LlamaGen): channel i of the first half pairs with channel i of the
second half, and the pair at frequency w_i = theta^(-2i/E) is rotated by the angle p * w_i:
  out[i]       = x[i] cos(p w_i) - x[i + E/2] sin(p w_i)
  out[i + E/2] = x[i] sin(p w_i) + x[i + E/2] cos(p w_i)
so q.k depends on positions only through their difference. 2D RoPE gives the first half of the
head's channels the row position and the second half the column position, each rotated as above
over its own E/2 channels. Angles and products run in float32; the result has x's dtype.

Dimension names: B batch, T sequence, H heads, E head dim.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

KINDS = ("1d", "2d")


def rope_1d(x: jax.Array, positions: jax.Array, theta: float = 10000.0) -> jax.Array:
  """x [B, T, H, E] (E even) rotated at integer or float positions [T] or [B, T]."""
  e = x.shape[-1]
  if e % 2:
    raise ValueError(f"RoPE needs an even head dim, got {e}")
  freqs = theta ** (-jnp.arange(0, e // 2, dtype=jnp.float32) * 2.0 / e)
  angles = jnp.asarray(positions, jnp.float32)[..., None] * freqs  # [(B,) T, E/2]
  if angles.ndim == 2:
    angles = angles[None]
  cos, sin = jnp.cos(angles)[:, :, None, :], jnp.sin(angles)[:, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1).astype(x.dtype)


def rope_2d(x: jax.Array, positions: jax.Array, theta: float = 10000.0) -> jax.Array:
  """x [B, T, H, E] (E divisible by 4) rotated at (row, column) positions [T, 2] or [B, T, 2]."""
  e = x.shape[-1]
  if e % 4:
    raise ValueError(f"2D RoPE needs a head dim divisible by 4, got {e}")
  positions = jnp.asarray(positions)
  rows, cols = jnp.split(x, 2, axis=-1)
  return jnp.concatenate([rope_1d(rows, positions[..., 0], theta),
                          rope_1d(cols, positions[..., 1], theta)], axis=-1)


def grid_positions(height: int, width: int) -> jax.Array:
  """(row, column) int32 [height * width, 2] of a row-major grid: the positions `rope_2d` takes."""
  ys, xs = jnp.meshgrid(jnp.arange(height), jnp.arange(width), indexing="ij")
  return jnp.stack([ys.reshape(-1), xs.reshape(-1)], axis=-1).astype(jnp.int32)


def apply(x: jax.Array, positions: jax.Array, kind: str, theta: float = 10000.0) -> jax.Array:
  """`rope_1d` or `rope_2d` by kind ("1d" / "2d")."""
  if kind == "1d":
    return rope_1d(x, positions, theta)
  if kind == "2d":
    return rope_2d(x, positions, theta)
  raise ValueError(f"rope must be one of {KINDS} or None, got {kind!r}")
