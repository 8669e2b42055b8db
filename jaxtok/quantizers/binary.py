"""Binary Bernoulli quantizer of 1D latent tokens (Instella-T2I's binary autoencoder).

Each latent token carries `n` logits z (n = 64 bits per token in the release, 128 tokens per image).
With sigma = sigmoid(z):

  train:  b ~ Bernoulli(sigmoid(z / T))       T = `temperature` (the release's `train_temp`; 0.1 here)
  eval:   b = [sigma > 0.5]                   deterministic (the release thresholds sigma, not z: a tiny
                                              positive z with sigmoid(z) == 0.5 in float32 gives 0)
  codes:  b + sigma - sg(sigma)               straight-through: the value is b, the gradient is
                                              d sigma / dz = sigma (1 - sigma); the sampling temperature
                                              does not enter the gradient (as in the release)
  aux:    mean(sigma (1 - sigma))             pushes the probabilities to 0 or 1 (the release's
                                              `code_book_loss`)

Codes are {0, 1}, as in the release (Instella-T2I `bae/bnl.py BinaryQuantizer`), not +-1. The release's
quantizer also embeds the codes, z_q = codes @ E with a learnt E [n, D] (N(0, 0.02^2) init): the sum of
the embeddings of the "on" bits. Here that is the separate `embed_bits`, because E is a network
parameter and the same product decodes sampled bits (`decode` in the release applies it to generated
bits too).

Indices: with n <= 31 bits a token's bits are packed MSB-first into one int32 (bit 0 of the code is
the most significant: bits [1, 0, 1] -> 5), so indices are [...] in [0, 2^n). With n > 31 (the release's
64) no int32 holds a token, and the indices are the bits themselves, [..., n] int32 in {0, 1};
`indices_to_codes` undoes either form given n.

Metrics treat every bit as a 2-level quantizer, averaged over bits (like the per-dimension metrics of
`dimwise`): `usage` is the mean fraction of {0, 1} that each bit takes in the batch, `perplexity` the
mean of exp(H(bit)) in [1, 2]. `joint_perplexity_bound` = exp(sum of the bit entropies) bounds the
perplexity of whole codes from above (equal when bits are independent).

Checked against the release (Instella-T2I `bae/bnl.py`, `bae/ae_model.py`, vendored in
sprintml/BitMark): Bernoulli sampling of sigmoid(z / T) in training, the eval threshold on
sigmoid(z), the straight-through through sigmoid(z) (not z / T), the aux loss mean(sigma (1 - sigma))
and {0, 1} codes: the same; no other prior or entropy term. T: `BinaryQuantizer.__init__` defaults
`train_temp` to 1.0 but `BAE_Model` passes `config.get('train_temp', 0.1)` and the released
`configs/bae_config.py` sets none, so the released autoencoder trains at T = 0.1, the default here.
The release's autoencoder training loop is not released, so the weight of the aux loss is unknown;
`aux_weight` defaults to 1.0 (the loss as the quantizer returns it). The generators' data are the
codes in eval mode (the release encodes with `bae.eval()`).

Dimension names: n bits per token, D embedding width.
"""
from __future__ import annotations

import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxtok.quantizers import base

sg = jax.lax.stop_gradient
HIGHEST = jax.lax.Precision.HIGHEST

MAX_PACKED_BITS = 31  # the largest n whose codes fit in a non-negative int32


def _check_number(name: str, value: Any, *, minimum: float, exclusive: bool) -> None:
  """Static real >= (or >) minimum; traced values (schedules) pass unchecked."""
  if isinstance(value, jax.Array) or hasattr(value, "aval"):
    return
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    raise TypeError(f"{name} must be a real number, got {type(value).__name__} ({value!r})")
  if not np.isfinite(value) or (value <= minimum if exclusive else value < minimum):
    raise ValueError(f"{name} must be {'>' if exclusive else '>='} {minimum} and finite, got {value}")


def packed(num_bits: int) -> bool:
  """Whether codes of `num_bits` bits are packed into one int32 index (n <= 31)."""
  return num_bits <= MAX_PACKED_BITS


def pack_bits(bits: jax.Array) -> jax.Array:
  """Bits [..., n] (any dtype, values 0/1) -> int32 [...], MSB first; n <= 31."""
  n = bits.shape[-1]
  if n > MAX_PACKED_BITS:
    raise ValueError(f"bits must have at most {MAX_PACKED_BITS} entries on the last axis to pack, got "
                     f"shape {tuple(bits.shape)}")
  weights = jnp.left_shift(jnp.int32(1), jnp.arange(n - 1, -1, -1, dtype=jnp.int32))
  return jnp.sum(bits.astype(jnp.int32) * weights, axis=-1, dtype=jnp.int32)


def unpack_bits(indices: jax.Array, num_bits: int) -> jax.Array:
  """int indices [...] -> int32 bits [..., num_bits], MSB first (inverse of `pack_bits`)."""
  shifts = jnp.arange(num_bits - 1, -1, -1, dtype=jnp.int32)
  return jnp.bitwise_and(jnp.right_shift(indices.astype(jnp.int32)[..., None], shifts), 1)


def _bit_metrics(b: jax.Array) -> dict[str, jax.Array]:
  """Per-bit usage/perplexity averaged over bits, and the product-of-marginals perplexity bound."""
  p1 = jnp.mean(b.reshape(-1, b.shape[-1]), axis=0)  # [n] fraction of ones per bit
  p = jnp.stack([1.0 - p1, p1], axis=-1)
  h = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0), axis=-1)
  return {
      "usage": jnp.mean(jnp.mean((p > 0).astype(jnp.float32), axis=-1)),
      "perplexity": jnp.mean(jnp.exp(h)),
      "joint_perplexity_bound": jnp.exp(jnp.sum(h)),
  }


def quantize(z: jax.Array, *, rng: jax.Array | None = None, train: bool = False,
             temperature: float | jax.Array = 0.1,
             aux_weight: float | jax.Array = 1.0) -> base.QuantizerOutput:
  """Binary quantization of bit logits.

  Args:
    z: [..., n] floating logits, one per bit (the output of the encoder's projection); computed in
      float32.
    rng: PRNG key, required when `train` (Bernoulli sampling).
    train: sample b ~ Bernoulli(sigmoid(z / temperature)); otherwise threshold sigmoid(z) > 0.5.
    temperature: T > 0, the sampling temperature in training (may be traced, e.g. a schedule).
    aux_weight: >= 0, weight of the aux loss mean(sigma (1 - sigma)) (may be traced).

  Returns:
    QuantizerOutput with
      codes: [..., n] in z's dtype, values in {0, 1}; gradient sigma (1 - sigma) to z (straight-through
        through sigma = sigmoid(z)).
      indices: int32, [...] MSB-first packed codes in [0, 2^n) when n <= 31, else the bits [..., n].
      losses: {"binary_aux": aux_weight * mean(sigma (1 - sigma))} float32.
      metrics: `usage`, `perplexity` (per bit, averaged), `joint_perplexity_bound`; float32.

  Raises:
    ValueError: if `train` and no `rng` is given.
  """
  base.check_float_array("z", z)
  base.check_finite("z", z)
  if z.shape[-1] < 1:
    raise ValueError(f"z must have at least one bit on the last axis, got shape {tuple(z.shape)}")
  if not isinstance(train, (bool, np.bool_)):
    raise TypeError(f"train must be a Python bool, got {type(train).__name__} ({train!r})")
  if train and rng is None:
    raise ValueError("rng must be a PRNG key when train=True (bits are sampled), got None")
  _check_number("temperature", temperature, minimum=0.0, exclusive=True)
  _check_number("aux_weight", aux_weight, minimum=0.0, exclusive=False)
  return _quantize(z, rng if train else None, temperature, aux_weight, bool(train))


@jax.jit(static_argnums=(4,))
def _quantize(z, rng, temperature, aux_weight, train):
  z32 = z.astype(jnp.float32)
  sigma = jax.nn.sigmoid(z32)
  if train:
    b = jax.random.bernoulli(rng, jax.nn.sigmoid(z32 / temperature)).astype(jnp.float32)
  else:
    b = (sigma > 0.5).astype(jnp.float32)
  b = sg(b)
  # b + (sigma - sg(sigma)) is exactly b in value, with the gradient of sigma.
  codes = (b + (sigma - sg(sigma))).astype(z.dtype)
  n = z.shape[-1]
  indices = pack_bits(b) if packed(n) else b.astype(jnp.int32)
  aux = jnp.mean(sigma * (1.0 - sigma))
  return base.QuantizerOutput(codes=codes, indices=indices,
                              losses={"binary_aux": jnp.asarray(aux_weight, jnp.float32) * aux},
                              metrics=_bit_metrics(b))


def indices_to_codes(indices: jax.Array, num_bits: int) -> jax.Array:
  """Indices from `quantize` -> float32 codes [..., num_bits] in {0, 1}.

  Args:
    indices: int array, [...] packed codes when num_bits <= 31, else [..., num_bits] bits.
    num_bits: n.
  """
  base.check_int_array("indices", indices)
  n = base.check_positive_int("num_bits", num_bits)
  if packed(n):
    return unpack_bits(indices, n).astype(jnp.float32)
  if indices.ndim < 1 or indices.shape[-1] != n:
    raise ValueError(f"indices must have shape [..., {n}] (bits, num_bits > {MAX_PACKED_BITS}), got "
                     f"shape {tuple(indices.shape)}")
  return indices.astype(jnp.float32)


def embed_bits(bits: jax.Array, embedding: jax.Array) -> jax.Array:
  """The release's z_q = bits @ E: the sum of the embeddings of the "on" bits.

  Args:
    bits: [..., n] floating codes (from `quantize`, keeping their straight-through gradient) or sampled
      bits.
    embedding: [n, D] floating embedding E.

  Returns:
    [..., D] float32 (full float32 matmul precision).
  """
  base.check_float_array("bits", bits)
  base.check_float_array("embedding", embedding, min_rank=2)
  if embedding.ndim != 2 or embedding.shape[0] != bits.shape[-1]:
    raise ValueError(f"embedding must have shape [{bits.shape[-1]}, D] (n = bits.shape[-1]), got shape "
                     f"{tuple(embedding.shape)}")
  return jnp.matmul(bits.astype(jnp.float32), embedding.astype(jnp.float32), precision=HIGHEST)
