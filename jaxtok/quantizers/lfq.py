"""Lookup-free quantization (LFQ, MAGVIT-v2, arXiv 2310.05737) and binary spherical quantization
(BSQ, arXiv 2406.07548) as `quantize(..., spherical=True)`.

Dimension names: N flattened vectors, D code dimension (= bits per token), G entropy groups,
g bits per group (D = G g), C = 2^g codes per group.

Every channel is quantized to its sign: x > 0 -> +s, otherwise -s (so x == 0 maps to -s), with
straight-through gradients. The index of a code reads its bits most significant first:
index = sum_i [q_i > 0] 2^(D-1-i) (the lucidrains LFQ and official BSQ convention). Indices are int32,
so D <= 31 is required; for longer codes split the channels and quantize each part separately.

  * LFQ: s = codebook_scale; codes are the corners of the cube {-s, s}^D.
  * BSQ (spherical=True): the input is l2-normalised (times codebook_scale) and s =
    codebook_scale / sqrt(D), so inputs and codes lie on the sphere of radius codebook_scale.

Entropy loss (training regulariser): for each vector, p = softmax over codes of
2 <x, c> * inv_temperature (the negative squared distance up to a constant), and
loss = entropy_weight * (mean_n H(p_n) - diversity_gamma * H(mean_n p_n)).
With group_size = g the D channels are split into G = D/g groups with their own 2^g-code softmax and
the entropies are summed over groups (BSQ's factorisation), so 2^D is never enumerated. Because the
logits are a sum over groups, the full 2^D distribution of one vector is the product of its group
distributions: the per-sample term is the same for every g, and the codebook term is an upper bound
of the full one (equal when g = D). H(p) = -sum p log(max(p, ENTROPY_EPS)) with ENTROPY_EPS = 1e-5
(vector-quantize-pytorch's clamp), for both terms. BSQ's paper divides the penalty by inv_temperature;
here entropy_weight is the whole factor.

All math is float32 whatever the input dtype.
"""
from __future__ import annotations

import math
import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxtok.quantizers import base
from jaxtok.quantizers import fsq
from jaxtok.quantizers import search

sg = jax.lax.stop_gradient

ENTROPY_EPS = 1e-5
MAX_INDEX_BITS = 31
# Entropy groups hold 2^g codes for every vector: beyond this the [N, G, 2^g] softmax is too large.
MAX_GROUP_BITS = 16


def _check_number(name: str, value: Any, *, minimum: float, exclusive: bool = False) -> None:
  """Checks a static real argument; traced values (schedules) pass unchecked."""
  if isinstance(value, jax.Array) or hasattr(value, "aval"):
    return
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    raise TypeError(f"{name} must be a real number, got {type(value).__name__} ({value!r})")
  if (value <= minimum) if exclusive else (value < minimum):
    raise ValueError(f"{name} must be {'>' if exclusive else '>='} {minimum}, got {value}")


def _check_bool(name: str, value: Any) -> None:
  if not isinstance(value, (bool, np.bool_)):
    raise TypeError(f"{name} must be a bool, got {type(value).__name__} ({value!r})")


def _check_dim(dim: int, what: str) -> None:
  if dim > MAX_INDEX_BITS:
    raise ValueError(
        f"{what} must be <= {MAX_INDEX_BITS} so that LFQ/BSQ indices fit int32, got {dim}; quantize "
        f"the channels in parts of <= {MAX_INDEX_BITS} bits instead")


def code_magnitude(dim: int, *, spherical: bool = False, codebook_scale: float = 1.0) -> float:
  """|code entry| s: codebook_scale for LFQ, codebook_scale / sqrt(dim) for BSQ."""
  return codebook_scale / math.sqrt(dim) if spherical else codebook_scale


def _bit_weights(dim: int) -> np.ndarray:
  """[D] int32 place values 2^(D-1), ..., 2, 1 (most significant bit first)."""
  return (2 ** np.arange(dim - 1, -1, -1, dtype=np.int64)).astype(np.int32)


def group_codebook(group_size: int, magnitude: float = 1.0) -> np.ndarray:
  """[2^g, g] float32 codes of one group, row j = the code whose MSB-first index is j."""
  j = np.arange(2**group_size)[:, None]
  bits = (j >> np.arange(group_size - 1, -1, -1)) & 1
  return np.where(bits == 1, magnitude, -magnitude).astype(np.float32)


def entropy_terms(x: jax.Array, *, group_size: int, magnitude: float,
                  inv_temperature: float | jax.Array = 100.0) -> tuple[jax.Array, jax.Array]:
  """Per-sample and codebook entropies of the soft code assignment, factorised over groups.

  Args:
    x: [N, D] float32 quantizer inputs (already normalised for BSQ).
    group_size: g, a divisor of D, g <= MAX_GROUP_BITS.
    magnitude: s, the code entries are +-s.
    inv_temperature: scale of the logits 2 <x, c>.

  Returns:
    (per_sample, codebook), float32 scalars in nats: mean_n sum_groups H(p_{n,group}) and
    sum_groups H(mean_n p_{n,group}), each in [0, D log 2].
  """
  n, d = x.shape
  g = group_size
  codes = group_codebook(g) * jnp.asarray(magnitude, jnp.float32)
  xg = x.reshape(n, d // g, g)
  # HIGHEST: accelerators would otherwise run this float32 matmul in bf16 passes.
  logits = 2.0 * inv_temperature * jnp.einsum("ngi,ci->ngc", xg, codes,
                                                precision=jax.lax.Precision.HIGHEST)
  p = jax.nn.softmax(logits, axis=-1)
  per_sample = jnp.mean(jnp.sum(base.entropy(p, axis=-1, eps=ENTROPY_EPS), axis=-1))
  codebook = jnp.sum(base.entropy(jnp.mean(p, axis=0), axis=-1, eps=ENTROPY_EPS))
  return per_sample, codebook


def bits_to_indices(bits: jax.Array) -> jax.Array:
  """[..., D] bits (0/1 ints) -> [...] int32 indices, most significant bit first (D <= 31)."""
  base.check_int_array("bits", bits)
  _check_dim(bits.shape[-1], "bits' last dimension D")
  return jnp.sum(bits.astype(jnp.int32) * _bit_weights(bits.shape[-1]), axis=-1, dtype=jnp.int32)


def quantize(z: jax.Array, *, inv_temperature: float = 100.0, entropy_weight: float = 0.1,
             diversity_gamma: float = 1.0, commitment_weight: float = 0.0,
             group_size: int | None = None, spherical: bool = False, codebook_scale: float = 1.0,
             rng: jax.Array | None = None, train: bool = False) -> base.QuantizerOutput:
  """Sign quantization of the last axis of z (LFQ, or BSQ with spherical=True).

  Args:
    z: [..., D] floating, D <= 31 (computed in float32).
    inv_temperature: > 0, scale of the entropy logits 2 <x, c>.
    entropy_weight: >= 0; 0 skips the entropy computation (no `entropy` loss, no entropy metrics).
    diversity_gamma: >= 0, weight of the codebook entropy inside the entropy loss.
    commitment_weight: >= 0, weight of mse(x, sg(q)) (x the input after BSQ normalisation).
    group_size: g dividing D, channels per entropy group (None: g = D, the full 2^D softmax; must be
      <= MAX_GROUP_BITS = 16 when entropy_weight > 0).
    spherical: BSQ: l2-normalise the input and use codes +-codebook_scale / sqrt(D).
    codebook_scale: > 0, the code magnitude (LFQ) or sphere radius (BSQ).
    rng, train: accepted for the common quantizer interface; this quantizer is deterministic and
      computes the same losses in both modes (skip them with zero weights).

  Returns:
    QuantizerOutput: codes [..., D] in z.dtype (value +-s; gradient straight-through to x, i.e. the
    identity for LFQ and through the normalisation for BSQ), indices [...] int32 MSB-first,
    losses {commitment[, entropy]} float32, metrics {usage, perplexity, dim_usage[,
    per_sample_entropy, codebook_entropy]} (usage over the 2^D codes when 2^D <= 2^20, otherwise
    per bit, see `fsq.grid_usage_metrics`).
  """
  base.check_float_array("z", z, min_rank=1)
  base.check_finite("z", z)
  d = z.shape[-1]
  _check_dim(d, "z's last dimension D (bits per code)")
  _check_number("inv_temperature", inv_temperature, minimum=0.0, exclusive=True)
  _check_number("entropy_weight", entropy_weight, minimum=0.0)
  _check_number("diversity_gamma", diversity_gamma, minimum=0.0)
  _check_number("commitment_weight", commitment_weight, minimum=0.0)
  _check_number("codebook_scale", codebook_scale, minimum=0.0, exclusive=True)
  _check_bool("spherical", spherical)
  use_entropy = not isinstance(entropy_weight, numbers.Real) or entropy_weight > 0
  if group_size is None:
    g = d
  else:
    g = base.check_positive_int("group_size", group_size)
    if d % g:
      raise ValueError(f"group_size must divide z's last dimension {d}, got {g}")
  if use_entropy and g > MAX_GROUP_BITS:
    raise ValueError(
        f"group_size must be <= {MAX_GROUP_BITS} when entropy_weight > 0 (the entropy enumerates "
        f"2^group_size codes per vector), got {g}" + (" (None means D)" if group_size is None else ""))
  del rng, train

  batch_shape = z.shape[:-1]
  x = z.reshape(-1, d).astype(jnp.float32)
  if spherical:
    x = search.l2_normalize(x) * codebook_scale
  s = code_magnitude(d, spherical=spherical, codebook_scale=codebook_scale)
  positive = x > 0
  s = jnp.asarray(s, jnp.float32)
  q = jnp.where(positive, s, -s)
  bits = positive.astype(jnp.int32)
  indices = bits_to_indices(bits)

  losses = {"commitment": commitment_weight * jnp.mean(jnp.square(x - sg(q)))}
  metrics = fsq.grid_usage_metrics(indices, bits, (2,) * d)
  if use_entropy:
    per_sample, codebook_h = entropy_terms(x, group_size=g, magnitude=s,
                                           inv_temperature=inv_temperature)
    losses["entropy"] = entropy_weight * (per_sample - diversity_gamma * codebook_h)
    metrics["per_sample_entropy"] = per_sample
    metrics["codebook_entropy"] = codebook_h

  codes = base.straight_through(x, q).reshape(batch_shape + (d,)).astype(z.dtype)
  return base.QuantizerOutput(codes=codes, indices=indices.reshape(batch_shape), losses=losses,
                              metrics=metrics)


def indices_to_codes(indices: jax.Array, dim: int, *, spherical: bool = False,
                     codebook_scale: float = 1.0) -> jax.Array:
  """Codes of MSB-first indices: [...] int -> [..., dim] float32 entries +-s (bitwise equal to the
  values `quantize` returns in float32). Only the low `dim` bits of each index are read."""
  base.check_int_array("indices", indices)
  d = base.check_positive_int("dim", dim)
  _check_dim(d, "dim")
  _check_bool("spherical", spherical)
  _check_number("codebook_scale", codebook_scale, minimum=0.0, exclusive=True)
  s = code_magnitude(d, spherical=spherical, codebook_scale=codebook_scale)
  shifts = np.arange(d - 1, -1, -1, dtype=np.int32)
  bits = (indices.astype(jnp.int32)[..., None] >> shifts) & 1
  s = jnp.asarray(s, jnp.float32)
  return jnp.where(bits == 1, s, -s)
