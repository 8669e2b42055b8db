"""Exact arithmetic coding of token sequences with an adaptive model, in Python integers.

A model gives, for each position i, an integer cumulative frequency table `cdf` [K + 1] (int64,
cdf[0] = 0, cdf[K] = 2**precision, strictly increasing so every symbol has frequency >= 1), computed
from the tokens before i only. Coding symbol s narrows the current interval [low, low + width) to its
sub-interval of relative size (cdf[s+1] - cdf[s]) / 2**precision.

Why exact integers: the interval after i symbols is held exactly (low and width are integers in units
of 2**-(precision * i)), so there is no renormalisation, carry propagation or underflow to get wrong,
and the encoder and the decoder agree bit for bit whenever the model gives them the same tables. Python
integers grow by `precision` bits per symbol, so coding n symbols costs O(n^2 * precision) bit
operations: microseconds per symbol for the few hundred tokens of a 1D tokenizer.

The payload is the shortest bit string c (b bits) whose dyadic cell [c 2^-b, (c + 1) 2^-b) lies inside
the final interval, written big-endian in ceil(b / 8) bytes with trailing zero bytes dropped (the
decoder reads missing bytes as zeros). The total is at most the ideal -log2 P(tokens) + 2 bits, rounded
up to whole bytes.

Progressive decoding: any byte prefix of a payload determines the symbols whose sub-interval contains
the whole cell of values the prefix allows ([P, P + 2^-8L) for L bytes); `decode(..., partial=True)`
returns exactly those. `bytes_needed` says, per token count, how many payload bytes are enough.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

CdfFn = Callable[[np.ndarray], np.ndarray]


def check_cdf(cdf: np.ndarray, precision: int, *, name: str = "cdf") -> np.ndarray:
  """Validates an integer cumulative frequency table [K + 1] summing to 2**precision."""
  cdf = np.asarray(cdf)
  if cdf.ndim != 1 or cdf.shape[0] < 2 or not np.issubdtype(cdf.dtype, np.integer):
    raise ValueError(f"{name} must be an integer array [K + 1] with K >= 1, got {cdf.dtype} "
                     f"{cdf.shape}")
  if cdf[0] != 0 or int(cdf[-1]) != 1 << precision:
    raise ValueError(f"{name} must run from 0 to 2**{precision} = {1 << precision}, got "
                     f"{int(cdf[0])} .. {int(cdf[-1])}")
  if not np.all(np.diff(cdf) > 0):
    raise ValueError(f"{name} must be strictly increasing (every symbol needs frequency >= 1)")
  return cdf


def _check_precision(precision: int) -> int:
  if not isinstance(precision, (int, np.integer)) or not 1 <= precision <= 62:
    raise ValueError(f"precision must be an int in [1, 62], got {precision!r}")
  return int(precision)


def _cell_bits(low: int, width: int, exponent: int) -> tuple[int, int]:
  """Shortest (c, b): the dyadic cell [c 2^-b, (c+1) 2^-b) inside [low, low + width) 2^-exponent."""
  # A cell of size 2^(exponent - b) fits only if it is at most `width`: start from the smallest such b.
  b = max(0, exponent - (width.bit_length() - 1))
  while True:
    shift = exponent - b
    if shift < 0:  # finer than the interval's own units: scale the interval up
      lo, hi, shift = low << -shift, (low + width) << -shift, 0
    else:
      lo, hi = low, low + width
    c = -(-lo >> shift)  # ceil(lo / 2^shift)
    if (c + 1) << shift <= hi:
      return c, b
    b += 1


def _to_bytes(c: int, b: int) -> bytes:
  n = -(-b // 8)
  return (c << (8 * n - b)).to_bytes(n, "big").rstrip(b"\0") if n else b""


def encode(tokens: Sequence[int], cdf_fn: CdfFn, *, precision: int = 30) -> tuple[bytes, list[int]]:
  """Codes `tokens` with the adaptive model `cdf_fn`.

  Args:
    tokens: n symbol ids (ints).
    cdf_fn: prefix (int32 [i]) -> cdf int [K + 1] for position i; called once per position, in order,
      with the same prefixes the decoder will pass.
    precision: log2 of every table's total.

  Returns:
    (payload, bytes_needed): bytes_needed[i] is how many leading payload bytes determine the first
    i + 1 tokens (`decode(payload[:m], ..., partial=True)` returns at least i + 1 tokens when
    m >= bytes_needed[i]).
  """
  precision = _check_precision(precision)
  tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
  low, width = 0, 1
  intervals = []
  for i, s in enumerate(tokens):
    cdf = check_cdf(cdf_fn(tokens[:i].astype(np.int32)), precision)
    if not 0 <= s < cdf.shape[0] - 1:
      raise ValueError(f"tokens[{i}] = {int(s)} is outside [0, {cdf.shape[0] - 1})")
    low = (low << precision) + int(cdf[s]) * width
    width *= int(cdf[s + 1] - cdf[s])
    intervals.append((low, width))
  exponent = precision * len(tokens)
  c, b = _cell_bits(low, width, exponent)
  payload = _to_bytes(c, b)
  value = int.from_bytes(payload.ljust(-(-b // 8), b"\0"), "big") if b else 0
  nbits = 8 * (-(-b // 8))
  needed = []
  for i, (lo, w) in enumerate(intervals):
    e = precision * (i + 1)
    m = needed[-1] if needed else 0
    while m < len(payload) and not _prefix_fits(value, nbits, m, lo, w, e):
      m += 1
    needed.append(m)  # m == len(payload): only the complete payload (read as an exact point) will do
  return payload, needed


def _prefix_fits(value: int, nbits: int, m: int, low: int, width: int, exponent: int) -> bool:
  """Whether the first m bytes of the nbits-bit value pin it inside [low, low + width) 2^-exponent."""
  p = value >> (nbits - 8 * m)  # the prefix, as a number of 2^-(8m) units
  # cell [p, p + 1) 2^-8m inside [low, low + width) 2^-exponent, compared at exponent + 8m
  return p << exponent >= low << (8 * m) and (p + 1) << exponent <= (low + width) << (8 * m)


def decode(payload: bytes, cdf_fn: CdfFn, num_tokens: int, *, precision: int = 30,
           partial: bool = False) -> np.ndarray:
  """The tokens `encode` coded into `payload` (int32 [num_tokens]).

  With partial=True, `payload` may be a byte prefix of the full payload: decoding stops before the
  first token the prefix does not determine, so every returned token is correct (possibly none).
  Without it the payload is taken as complete (missing trailing bytes are zeros).
  """
  precision = _check_precision(precision)
  if not isinstance(num_tokens, (int, np.integer)) or num_tokens < 0:
    raise ValueError(f"num_tokens must be an int >= 0, got {num_tokens!r}")
  nbits = 8 * len(payload)
  value = int.from_bytes(payload, "big")
  out = np.zeros((int(num_tokens),), np.int32)
  low, width = 0, 1
  for i in range(int(num_tokens)):
    cdf = check_cdf(cdf_fn(out[:i]), precision)
    e = precision * i
    # Offset of the value inside the interval, in units of width * 2^-(e + precision): the symbol is
    # the last s with cdf[s] <= that offset.
    num = (value << e) - (low << nbits)  # (value - low) at exponent e + nbits
    target = (num << precision) // (width << nbits)
    s = int(np.searchsorted(cdf, target, side="right") - 1)
    if not 0 <= s < cdf.shape[0] - 1:
      raise ValueError(f"payload is corrupted: token {i} decodes outside the model's range")
    low = (low << precision) + int(cdf[s]) * width
    width *= int(cdf[s + 1] - cdf[s])
    if partial and not (value << (e + precision) >= low << nbits
                        and (value + 1) << (e + precision) <= (low + width) << nbits):
      return out[:i]
    out[i] = s
  return out
