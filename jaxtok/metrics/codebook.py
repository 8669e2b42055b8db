"""Codebook usage and perplexity over a whole dataset (streaming, on the host).

One batch's usage (jaxtok.quantizers.base.usage_metrics) says little about a large codebook: a 4096-code
book cannot be covered by a batch of 32 x 128 tokens. This accumulates an int64 histogram over every
batch of a dataset and reports the usage and perplexity of the whole.
"""
from __future__ import annotations

import numpy as np


class CodebookUsage:
  """Streaming histogram of token ids.

  Example:
    usage = CodebookUsage(4096)
    for batch in data: usage.update(tokenizer.encode(params, batch).tokens)
    usage.result()  # {"usage": ..., "perplexity": ..., "entropy_bits": ..., "dead_codes": ...}
  """

  def __init__(self, codebook_size: int):
    if isinstance(codebook_size, bool) or not isinstance(codebook_size, (int, np.integer)) or codebook_size < 1:
      raise ValueError(f"codebook_size must be a positive int, got {codebook_size!r}")
    self.codebook_size = int(codebook_size)
    self.counts = np.zeros((self.codebook_size,), np.int64)

  def update(self, tokens) -> "CodebookUsage":
    """Adds token ids of any shape (int; a jax array is fetched). Ids outside [0, K) raise ValueError;
    negative ids equal to -1 (dropped levels of residual quantizers) are ignored."""
    t = np.asarray(tokens)
    if not np.issubdtype(t.dtype, np.integer):
      raise TypeError(f"tokens must be integers, got dtype {t.dtype}")
    t = t.reshape(-1)
    t = t[t != -1]
    if t.size and (t.min() < 0 or t.max() >= self.codebook_size):
      raise ValueError(f"tokens must lie in [0, {self.codebook_size}), got values in [{t.min()}, {t.max()}]")
    self.counts += np.bincount(t, minlength=self.codebook_size)
    return self

  def merge(self, other: "CodebookUsage") -> "CodebookUsage":
    """Adds another histogram (e.g. from another host) into this one."""
    if other.codebook_size != self.codebook_size:
      raise ValueError(f"cannot merge a codebook of {other.codebook_size} into one of {self.codebook_size}")
    self.counts += other.counts
    return self

  def result(self) -> dict[str, float]:
    """usage: fraction of codes seen; perplexity: exp(entropy) of the code distribution (nats);
    entropy_bits: the same entropy in bits (the ideal rate per token); dead_codes: codes never seen."""
    total = self.counts.sum()
    used = int((self.counts > 0).sum())
    if total == 0:
      return {"usage": 0.0, "perplexity": 0.0, "entropy_bits": 0.0, "dead_codes": self.codebook_size,
              "tokens": 0}
    p = self.counts[self.counts > 0] / total
    h = float(-(p * np.log(p)).sum())
    return {"usage": used / self.codebook_size, "perplexity": float(np.exp(h)),
            "entropy_bits": h / np.log(2), "dead_codes": self.codebook_size - used, "tokens": int(total)}
