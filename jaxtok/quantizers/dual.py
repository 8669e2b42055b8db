"""TokenFlow's dual-codebook quantizer with a shared mapping (Qu et al. 2024, ByteFlow-AI/TokenFlow).

Two codebooks of the same size K, a semantic one [K, Ds] and a pixel one [K, Dp], and ONE index per
vector: entry i of both books is a pair. With the semantic feature s and the pixel feature p of a
position (both l2-normalised, as the official `VectorQuantizer` with codebook_l2_norm=True does, the
codes too),

  d_sem[i] = ||s - e_sem[i]||^2,   d_pix[i] = ||p - e_pix[i]||^2
  i*       = argmin_i  w_sem * d_sem[i] + w_pix * d_pix[i]

(the official code fixes w_sem = w_pix = 1: `d = d_vqkd + 1.0 * d_vqgan`), and the position is
replaced by (e_sem[i*], e_pix[i*]). The losses are the official ones on the concatenation
x = [s, p], q = [e_sem[i*], e_pix[i*]] (mean over every entry of both):
  codebook   = codebook_weight * mean((q - sg(x))^2)
  commitment = beta * mean((sg(q) - x)^2)
with straight-through gradients to s and p. Metrics: usage / perplexity of the shared indices, and
each book's mean distortion.

Dimension names: N vectors (any leading shape), K codebook size, Ds / Dp code dims.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxtok.quantizers import base
from jaxtok.quantizers.search import l2_normalize

sg = jax.lax.stop_gradient


class DualOutput(NamedTuple):
  """What `quantize` returns (a pytree).

  Attributes:
    semantic: [..., Ds] chosen semantic codes (straight-through to the semantic input).
    pixel: [..., Dp] chosen pixel codes (straight-through to the pixel input).
    indices: [...] int32, the one index selecting both.
    losses: {codebook, commitment} float32 scalars, weighted.
    metrics: {usage, perplexity, distortion_semantic, distortion_pixel} float32 scalars.
  """
  semantic: jax.Array
  pixel: jax.Array
  indices: jax.Array
  losses: dict[str, jax.Array]
  metrics: dict[str, jax.Array]


def _check_books(semantic_codebook: Any, pixel_codebook: Any) -> int:
  base.check_float_array("semantic_codebook", semantic_codebook, min_rank=2)
  base.check_float_array("pixel_codebook", pixel_codebook, min_rank=2)
  if semantic_codebook.ndim != 2 or pixel_codebook.ndim != 2 or (
      semantic_codebook.shape[0] != pixel_codebook.shape[0]):
    raise ValueError(f"semantic_codebook and pixel_codebook must be [K, Ds] and [K, Dp] with the same "
                     f"K (one shared index), got {tuple(semantic_codebook.shape)} and "
                     f"{tuple(pixel_codebook.shape)}")
  return int(semantic_codebook.shape[0])


def sq_distances(x: jax.Array, codebook: jax.Array) -> jax.Array:
  """||x_n - c_k||^2 as ||x||^2 + ||c||^2 - 2 x.c (the official expansion): x [N, D], codebook
  [K, D] -> [N, K] float32."""
  x, codebook = x.astype(jnp.float32), codebook.astype(jnp.float32)
  cross = jnp.einsum("nd,kd->nk", x, codebook, precision=jax.lax.Precision.HIGHEST)
  return (jnp.sum(x * x, -1, keepdims=True) + jnp.sum(codebook * codebook, -1)[None] - 2.0 * cross)


def joint_distances(semantic: jax.Array, pixel: jax.Array, semantic_codebook: jax.Array,
                    pixel_codebook: jax.Array, *, semantic_weight: float = 1.0,
                    pixel_weight: float = 1.0, l2_norm: bool = True):
  """(d [N, K], d_sem [N, K], d_pix [N, K]) float32 with d = w_sem d_sem + w_pix d_pix, after the
  l2 normalisation of inputs and codes when `l2_norm`; semantic [N, Ds], pixel [N, Dp]."""
  if l2_norm:
    semantic, pixel = l2_normalize(semantic), l2_normalize(pixel)
    semantic_codebook, pixel_codebook = l2_normalize(semantic_codebook), l2_normalize(pixel_codebook)
  d_sem = sq_distances(semantic, semantic_codebook)
  d_pix = sq_distances(pixel, pixel_codebook)
  return semantic_weight * d_sem + pixel_weight * d_pix, d_sem, d_pix


def quantize(semantic: jax.Array, pixel: jax.Array, semantic_codebook: jax.Array,
             pixel_codebook: jax.Array, *, semantic_weight: float = 1.0, pixel_weight: float = 1.0,
             beta: float = 0.25, codebook_weight: float = 1.0, l2_norm: bool = True) -> DualOutput:
  """Joint nearest pair of codes (module docstring).

  Args:
    semantic: [..., Ds] float; pixel: [..., Dp] float with the same leading shape.
    semantic_codebook: [K, Ds]; pixel_codebook: [K, Dp] (gradient-trained parameters).
    semantic_weight, pixel_weight: w_sem, w_pix of the joint distance (>= 0).
    beta: commitment weight; codebook_weight: codebook-loss weight.
    l2_norm: normalise inputs and codes (TokenFlow's codebook_l2_norm, on by default).

  Returns:
    DualOutput (codes in float32).
  """
  k = _check_books(semantic_codebook, pixel_codebook)
  base.check_float_array("semantic", semantic, last_dim=semantic_codebook.shape[1])
  base.check_float_array("pixel", pixel, last_dim=pixel_codebook.shape[1])
  if semantic.shape[:-1] != pixel.shape[:-1]:
    raise ValueError(f"semantic and pixel must share their leading shape (one index per position), "
                     f"got {tuple(semantic.shape)} and {tuple(pixel.shape)}")
  for name, v in (("semantic_weight", semantic_weight), ("pixel_weight", pixel_weight),
                  ("beta", beta), ("codebook_weight", codebook_weight)):
    if isinstance(v, (int, float)) and v < 0:
      raise ValueError(f"{name} must be >= 0, got {v!r}")
  lead = semantic.shape[:-1]
  s = semantic.reshape(-1, semantic.shape[-1]).astype(jnp.float32)
  p = pixel.reshape(-1, pixel.shape[-1]).astype(jnp.float32)
  cs, cp = semantic_codebook.astype(jnp.float32), pixel_codebook.astype(jnp.float32)
  if l2_norm:
    s, p, cs, cp = l2_normalize(s), l2_normalize(p), l2_normalize(cs), l2_normalize(cp)
  d, d_sem, d_pix = joint_distances(sg(s), sg(p), sg(cs), sg(cp), semantic_weight=semantic_weight,
                                    pixel_weight=pixel_weight, l2_norm=False)
  idx = jnp.argmin(d, axis=-1).astype(jnp.int32)
  qs, qp = jnp.take(cs, idx, axis=0), jnp.take(cp, idx, axis=0)
  x, q = jnp.concatenate([s, p], -1), jnp.concatenate([qs, qp], -1)
  losses = {"codebook": codebook_weight * jnp.mean(jnp.square(q - sg(x))),
            "commitment": beta * jnp.mean(jnp.square(sg(q) - x))}
  pick = lambda a: jnp.mean(jnp.take_along_axis(a, idx[:, None], axis=-1))
  metrics = dict(base.usage_metrics(idx, k), distortion_semantic=pick(d_sem),
                 distortion_pixel=pick(d_pix))
  return DualOutput(base.straight_through(s, qs).reshape(lead + (-1,)),
                    base.straight_through(p, qp).reshape(lead + (-1,)), idx.reshape(lead), losses,
                    metrics)


def indices_to_codes(indices: jax.Array, semantic_codebook: jax.Array, pixel_codebook: jax.Array, *,
                     l2_norm: bool = True) -> tuple[jax.Array, jax.Array]:
  """(semantic [..., Ds], pixel [..., Dp]) float32 codes of shared indices [...] (l2-normalised
  codes with `l2_norm`, as `quantize` returns them). Concrete indices outside [0, K) raise."""
  k = _check_books(semantic_codebook, pixel_codebook)
  base.check_int_array("indices", indices)
  base.check_indices("indices", indices, k)
  cs, cp = semantic_codebook.astype(jnp.float32), pixel_codebook.astype(jnp.float32)
  if l2_norm:
    cs, cp = l2_normalize(cs), l2_normalize(cp)
  idx = indices.astype(jnp.int32)
  return jnp.take(cs, idx, axis=0, mode="clip"), jnp.take(cp, idx, axis=0, mode="clip")
