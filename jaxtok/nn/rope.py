"""Rotary position embedding (RoPE) of queries and keys, over a 1D sequence or a 2D grid.

Half-split layout (GPT-NeoX / LlamaGen): channel i of the first half pairs with channel i of the
second half, and the pair at frequency w_i = theta^(-2i/E) is rotated by the angle p * w_i:
  out[i]       = x[i] cos(p w_i) - x[i + E/2] sin(p w_i)
  out[i + E/2] = x[i] sin(p w_i) + x[i + E/2] cos(p w_i)
so q.k depends on positions only through their difference. 2D RoPE gives the first half of the
head's channels the row position and the second half the column position, each rotated as above
over its own E/2 channels. Angles and products run in float32; the result has x's dtype.

"angles": the caller gives every channel's angle a [T, E] (or [B, T, E]) and the half-split rotation
x cos(a) + rotate_half(x) sin(a), rotate_half(x) = [-x[E/2:], x[:E/2]], is applied as it is (Llama's
`apply_rotary_pos_emb`). 1D RoPE is the case a = [p w, p w]; Instella-T2I's autoencoder feeds it
Flux's channel-interleaved multi-axis tables (`flux_angles`), whose channel i and i + E/2 carry
different angles: then it is not a rotation, and only this form reproduces the release.

Dimension names: B batch, T sequence, H heads, E head dim.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

KINDS = ("1d", "2d", "angles")


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


def rope_angles(x: jax.Array, angles: jax.Array) -> jax.Array:
  """x [B, T, H, E] -> x cos(a) + rotate_half(x) sin(a) for per-channel angles a [T, E] or [B, T, E]
  (module docstring); float32 arithmetic, x's dtype out."""
  e = x.shape[-1]
  angles = jnp.asarray(angles, jnp.float32)
  if e % 2 or angles.shape[-1] != e:
    raise ValueError(f"angle RoPE needs an even head dim and angles [..., T, {e}], got head dim {e} "
                     f"and angles shape {tuple(angles.shape)}")
  if angles.ndim == 2:
    angles = angles[None]
  cos, sin = jnp.cos(angles)[:, :, None, :], jnp.sin(angles)[:, :, None, :]
  x32 = x.astype(jnp.float32)
  x1, x2 = jnp.split(x32, 2, axis=-1)
  return (x32 * cos + jnp.concatenate([-x2, x1], axis=-1) * sin).astype(x.dtype)


def flux_angles(ids: jax.Array, axes_dim, theta: float = 10000.0) -> jax.Array:
  """Flux's multi-axis RoPE angles (diffusers `FluxPosEmbed`): ids float [T, A] (one position per
  axis), axes_dim (d_1..d_A), sum E -> float32 [T, E]; axis i's d_i channels hold p_i theta^(-2k/d_i)
  for k = 0..d_i/2-1, each repeated twice (channel-interleaved)."""
  ids = jnp.asarray(ids, jnp.float32)
  if ids.ndim != 2 or ids.shape[-1] != len(axes_dim):
    raise ValueError(f"ids must be [T, {len(axes_dim)}] (one position per axis of axes_dim "
                     f"{tuple(axes_dim)}), got shape {tuple(ids.shape)}")
  out = []
  for i, d in enumerate(axes_dim):
    if d % 2:
      raise ValueError(f"axes_dim entries must be even, got {tuple(axes_dim)}")
    freqs = theta ** (-jnp.arange(0, d, 2, dtype=jnp.float32) / d)
    out.append(jnp.repeat(ids[:, i:i + 1] * freqs, 2, axis=-1))
  return jnp.concatenate(out, axis=-1)


def grid_positions(height: int, width: int) -> jax.Array:
  """(row, column) int32 [height * width, 2] of a row-major grid: the positions `rope_2d` takes."""
  ys, xs = jnp.meshgrid(jnp.arange(height), jnp.arange(width), indexing="ij")
  return jnp.stack([ys.reshape(-1), xs.reshape(-1)], axis=-1).astype(jnp.int32)


def apply(x: jax.Array, positions: jax.Array, kind: str, theta: float = 10000.0) -> jax.Array:
  """`rope_1d`, `rope_2d` or `rope_angles` by kind ("1d" / "2d" / "angles": positions are then the
  angles)."""
  if kind == "1d":
    return rope_1d(x, positions, theta)
  if kind == "2d":
    return rope_2d(x, positions, theta)
  if kind == "angles":
    return rope_angles(x, positions)
  raise ValueError(f"rope must be one of {KINDS} or None, got {kind!r}")
