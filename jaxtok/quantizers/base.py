"""Shared pieces of every quantizer: the output type, straight-through, usage metrics, input checks.

Dimension names: N flattened vectors, D code dimension, K codebook size.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np


class QuantizerOutput(NamedTuple):
  """What every `quantize` returns (a pytree, so it passes through jit/vmap/grad).

  Attributes:
    codes: [..., D] quantized vectors in the input dtype; in value the codes, in gradient the input
      (straight-through, or the rotation trick where a quantizer offers it).
    indices: [...] int32 code index per vector (some quantizers add a trailing axis: per level for
      residual quantizers, per dimension for dimension-wise quantization).
    losses: dict of float32 scalars to add (already weighted) to the training loss.
    metrics: dict of float32 scalars for logging (at least `usage` and `perplexity`).
  """
  codes: jax.Array
  indices: jax.Array
  losses: dict[str, jax.Array]
  metrics: dict[str, jax.Array]


FLOAT_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16, jnp.float64)


def check_float_array(name: str, x: Any, *, min_rank: int = 1, last_dim: int | None = None) -> None:
  """Raises TypeError/ValueError naming `name` unless `x` is a floating array of the expected shape."""
  if not hasattr(x, "dtype") or not hasattr(x, "shape"):
    raise TypeError(f"{name} must be a jax or numpy array, got {type(x).__name__}")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f"{name} must have a floating dtype (float32, bfloat16, float16), got {x.dtype}")
  if x.ndim < min_rank:
    raise ValueError(f"{name} must have rank >= {min_rank} (shape [..., D]), got shape {tuple(x.shape)}")
  if last_dim is not None and x.shape[-1] != last_dim:
    raise ValueError(
        f"{name} must have last dimension {last_dim}, got shape {tuple(x.shape)} (last dimension "
        f"{x.shape[-1]})")


def check_int_array(name: str, x: Any) -> None:
  """Raises TypeError naming `name` unless `x` is an integer array."""
  if not hasattr(x, "dtype") or not hasattr(x, "shape"):
    raise TypeError(f"{name} must be a jax or numpy array, got {type(x).__name__}")
  if not jnp.issubdtype(x.dtype, jnp.integer):
    raise TypeError(f"{name} must have an integer dtype (int32), got {x.dtype}")


def is_concrete(x: Any) -> bool:
  """True when x's values are known now (not a tracer), so value checks can run."""
  return not isinstance(x, jax.core.Tracer)


def _host(x: Any) -> np.ndarray:
  # A concrete array closed over by a traced function would otherwise be staged into the trace.
  with jax.ensure_compile_time_eval():
    return np.asarray(x)


def check_finite(name: str, x: Any) -> None:
  """Raises ValueError naming `name` and the first NaN/inf when a concrete float array has one.

  Nearest-code search on a NaN picks code 0 and every loss becomes NaN, so a silent wrong answer
  would follow. Under a trace the values are unknown and nothing is checked: there, wrap the caller
  in `jax.experimental.checkify.checkify(..., errors=checkify.float_checks)` to catch the NaN.
  """
  if not is_concrete(x) or not jnp.issubdtype(x.dtype, jnp.floating) or x.size == 0:
    return
  v = _host(x)
  bad = ~np.isfinite(v)
  if bad.any():
    where = tuple(int(i) for i in np.argwhere(bad)[0])
    raise ValueError(f"{name} must be finite, got {int(bad.sum())} NaN/inf value(s) of {v.size}, "
                     f"the first {v[where]} at index {where}")


def check_indices(name: str, indices: Any, size: int) -> None:
  """Raises ValueError naming `name`, the range [0, size) and the first bad id when a concrete
  integer array holds an id outside it.

  Under a trace the values are unknown and nothing is checked; the documented behaviour there is
  each lookup's own (VQ clips to [0, K-1], FSQ takes ids modulo K). To fail instead, call
  `checkify_indices` inside a function wrapped by `jax.experimental.checkify.checkify`.
  """
  if not is_concrete(indices) or indices.size == 0:
    return
  v = _host(indices)
  bad = (v < 0) | (v >= size)
  if bad.any():
    where = tuple(int(i) for i in np.argwhere(bad)[0])
    raise ValueError(f"{name} must be ids in [0, {size}) (codebook size {size}), got "
                     f"{int(v[where])} at index {where}")


def checkify_indices(name: str, indices: jax.Array, size: int) -> None:
  """The traced form of `check_indices`: a `checkify.check` that ids lie in [0, size).

  Only valid inside `jax.experimental.checkify.checkify(fn)`; the error names the first bad id:
    err, out = checkify.checkify(jax.jit(f))(tokens); err.throw()
  """
  from jax.experimental import checkify  # pylint: disable=g-import-not-at-top
  flat = jnp.ravel(indices)
  bad = (flat < 0) | (flat >= size)
  first = jnp.argmax(bad)
  checkify.check(~jnp.any(bad), f"{name} must be ids in [0, {size}) (codebook size {size}), got "
                 "{value} at flat index {index}", value=flat[first], index=first)


def check_positive_int(name: str, value: Any, *, minimum: int = 1) -> int:
  """Returns `value` as an int, or raises naming `name` unless it is an integer >= `minimum`."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
  if value < minimum:
    raise ValueError(f"{name} must be >= {minimum}, got {value}")
  return int(value)


def straight_through(x: jax.Array, q: jax.Array) -> jax.Array:
  """Returns `q` in value and the identity gradient to `x` (and none to `q`).

  The usual x + stop_gradient(q - x) has the same gradient, but its value is q only up to rounding
  (q - x then + x) and it costs two more passes over the array; the custom JVP returns q itself.
  Both arguments are cast to their common dtype, the result's.
  """
  dtype = jnp.result_type(x, q)
  return _identity_gradient(jnp.asarray(x, dtype), jnp.asarray(q, dtype))


@jax.custom_jvp
def _identity_gradient(x: jax.Array, q: jax.Array) -> jax.Array:
  del x
  return q


@_identity_gradient.defjvp
def _identity_gradient_jvp(primals, tangents):
  _, q = primals
  x_dot, _ = tangents
  return q, x_dot


def usage_metrics(indices: jax.Array, codebook_size: int) -> dict[str, jax.Array]:
  """Codebook usage of one batch of indices.

  Args:
    indices: int array of any shape with values in [0, codebook_size).
    codebook_size: K.

  Returns:
    dict with `usage` (fraction of the K codes used at least once in the batch) and `perplexity`
    (exp of the entropy of the batch's code histogram; K when codes are used uniformly, 1 when one
    code takes everything). Both float32 scalars.
  """
  counts = jnp.bincount(indices.reshape(-1), length=codebook_size).astype(jnp.float32)
  return histogram_metrics(counts)


def histogram_metrics(counts: jax.Array) -> dict[str, jax.Array]:
  """Usage and perplexity from a histogram of code counts [K] (see `usage_metrics`)."""
  total = jnp.maximum(counts.sum(), 1.0)
  p = counts / total
  entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))
  return {
      "usage": jnp.mean((counts > 0).astype(jnp.float32)),
      "perplexity": jnp.exp(entropy),
  }


def entropy(p: jax.Array, axis: int | Sequence[int] = -1, eps: float = 1e-8) -> jax.Array:
  """Shannon entropy in nats of probabilities `p` along `axis`: -sum p log(max(p, eps))."""
  return -jnp.sum(p * jnp.log(jnp.maximum(p, eps)), axis=axis)


def num_bits_for(codebook_size: int) -> float:
  """log2 of the codebook size (bits per token), for rate metrics."""
  return math.log2(codebook_size)
