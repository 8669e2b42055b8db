"""Model probabilities -> the integer frequency tables the arithmetic coder uses, deterministically.

The encoder and the decoder must build bit-identical tables from the model. Everything after the
model's float32 logits runs in numpy float64 with a fixed order of operations, so identical logits give
identical tables; the logits themselves are identical when both sides run the same model, program and
batch shape on the same backend (`jaxtok.codec.priors` evaluates one sequence at a time for this).
"""
from __future__ import annotations

import numpy as np

PRECISION = 30  # log2 of every table's total: a token can cost up to 30 bits, never more


def quantize(probs: np.ndarray, precision: int = PRECISION) -> np.ndarray:
  """probs [K] (non-negative, any positive sum) -> cdf int64 [K + 1] from 0 to 2**precision.

  Every symbol gets 1 + floor(p * (T - K)) (so none is impossible), the rounding remainder goes to the
  most probable symbol (lowest index on ties).
  """
  p = np.asarray(probs, np.float64).reshape(-1)
  k = p.shape[0]
  total = 1 << precision
  if k < 1 or k >= total:
    raise ValueError(f"probs must have between 1 and 2**{precision} - 1 entries, got {k}")
  if not np.all(np.isfinite(p)) or np.any(p < 0) or not p.sum() > 0:
    raise ValueError("probs must be finite, non-negative and not all zero")
  p = p / p.sum()
  freq = 1 + np.floor(p * (total - k)).astype(np.int64)
  freq[int(np.argmax(p))] += total - int(freq.sum())
  return np.concatenate([np.zeros((1,), np.int64), np.cumsum(freq)])


def softmax(logits: np.ndarray) -> np.ndarray:
  """logits [K] (float32 from the model) -> probabilities float64 [K]."""
  x = np.asarray(logits, np.float64).reshape(-1)
  if not np.all(np.isfinite(x)):
    raise ValueError("logits must be finite")
  e = np.exp(x - x.max())
  return e / e.sum()


def from_logits(logits: np.ndarray, precision: int = PRECISION) -> np.ndarray:
  """logits [K] -> cdf int64 [K + 1] of softmax(logits)."""
  return quantize(softmax(logits), precision)


def bits(cdf: np.ndarray, symbol: int) -> float:
  """Ideal code length of `symbol` under the table: -log2((cdf[s+1] - cdf[s]) / total)."""
  total = float(cdf[-1])
  return float(-np.log2((cdf[symbol + 1] - cdf[symbol]) / total))
