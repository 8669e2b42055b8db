"""Categorical sampling that keeps low-probability tails, with temperature, top-k and top-p.

B...: any batch shape, V: vocabulary.

Why our own Gumbel noise: float32 ``jax.random.gumbel`` (mode="low") maps a uniform with 23 random
bits through -log(-log(u)), so it never exceeds -log(-log(1 - 2^-23)) = 15.94; a class whose logit
lies more than ~20 nats under the top one (relative probability below ~1e-9) can then never win the
argmax, which lowers the effective temperature (Zheng et al. 2024, arXiv 2409.02908). Here a draw is
built from 64 random bits n read as the fixed-point uniform u = (n + 1/2) / 2^64, and the
exponential variate E = -log u is computed from whichever of u and 1 - u is small (both are formed
from the bits without cancellation), so the Gumbel noise -log E reaches 65 ln 2 = 45.05 and its tail
P(G > g) = 1 - exp(-e^-g) is exact down to ~2^-64 (tested).
"""
import jax
import jax.numpy as jnp
import numpy as np

from jaxtok.samplers import _checks

_TWO_M32 = np.float32(2.0 ** -32)
_TWO_M64 = np.float32(2.0 ** -64)
GUMBEL_MAX = 65 * float(np.log(2.0))  # largest value `gumbel_from_bits` can return


def _fixed_point(hi, lo):
  """(hi 2^32 + lo + 1/2) / 2^64 in float32 for uint32 words; exact to float32 rounding."""
  return hi.astype(jnp.float32) * _TWO_M32 + (lo.astype(jnp.float32) + 0.5) * _TWO_M64


def gumbel_from_bits(bits):
  """Standard Gumbel float32 [...] from random words uint32 [2, ...] (high word first).

  With n = bits[0] 2^32 + bits[1], u = (n + 1/2) / 2^64 and 1 - u = (~n + 1/2) / 2^64. For u < 1/2
  (high bit clear) E = -log(u); otherwise E = -log1p(-(1 - u)), where 1 - u is tiny and exact in
  float32, so the upper tail (u -> 1, large noise) keeps all 64 bits. Monotone increasing in n.
  """
  hi, lo = bits[0], bits[1]
  small_u = hi < jnp.uint32(1 << 31)
  e_small = -jnp.log(_fixed_point(hi, lo))
  e_large = -jnp.log1p(-_fixed_point(~hi, ~lo))
  return -jnp.log(jnp.where(small_u, e_small, e_large))


def gumbel(rng, shape):
  """Standard Gumbel noise float32 ``shape`` from 64 random bits per entry (see module docstring)."""
  return gumbel_from_bits(jax.random.bits(rng, (2,) + tuple(shape), jnp.uint32))


def check_args(vocab, *, temperature=1.0, top_k=None, top_p=None):
  """Validates sampling arguments for a vocabulary of size ``vocab`` (raises ValueError)."""
  _checks.temperature(temperature)
  if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer))
                            or not 1 <= top_k <= vocab):
    raise ValueError(f"top_k must be an int in [1, {vocab}] (vocabulary size), got {top_k!r}")
  if top_p is not None and not 0.0 < top_p <= 1.0:
    raise ValueError(f"top_p must be in (0, 1], got {top_p}")


def filter_logits(logits, *, top_k=None, top_p=None):
  """Sets logits outside the top-k / nucleus to -inf; float32 [..., V] -> float32 [..., V].

  top-k keeps every logit >= the k-th largest (ties at the boundary are kept, as LlamaGen does).
  top-p (nucleus, Holtzman et al. 2020, LlamaGen's rule) keeps the smallest descending prefix whose
  probability reaches p (a token is kept when the mass strictly before it is < p, so the top token
  always stays), then keeps every token tied with the last one kept. top_p = 1 filters nothing, so
  tails survive exactly.
  """
  logits = jnp.asarray(logits, jnp.float32)
  v = logits.shape[-1]
  if top_k is not None and top_k < v:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p is not None and top_p < 1.0:
    desc = -jnp.sort(-logits, axis=-1)
    p = jax.nn.softmax(desc, axis=-1)
    before = jnp.cumsum(p, axis=-1) - p
    kept = jnp.sum(before < top_p, axis=-1, keepdims=True)  # >= 1
    cut = jnp.take_along_axis(desc, kept - 1, axis=-1)
    logits = jnp.where(logits < cut, -jnp.inf, logits)
  return logits


def sample(rng, logits, *, temperature=1.0, top_k=None, top_p=None, forbidden_ids=()):
  """Samples ids int32 [...] from logits [..., V] (any float dtype, math in float32).

  Order of operations (LlamaGen's): forbidden ids -> logits / temperature -> top-k -> top-p ->
  Gumbel-max with `gumbel` noise. temperature 0 is greedy (argmax after the filters).
  """
  logits = jnp.asarray(logits, jnp.float32)
  v = logits.shape[-1]
  check_args(v, temperature=temperature, top_k=top_k, top_p=top_p)
  for i in forbidden_ids:
    if not 0 <= i < v:
      raise ValueError(f"forbidden id {i} outside vocabulary [0, {v})")
    logits = logits.at[..., i].set(-jnp.inf)
  if temperature == 0:
    return jnp.argmax(filter_logits(logits, top_k=top_k), -1).astype(jnp.int32)
  logits = filter_logits(logits / temperature, top_k=top_k, top_p=top_p)
  return jnp.argmax(logits + gumbel(rng, logits.shape), -1).astype(jnp.int32)
