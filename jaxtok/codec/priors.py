"""Token priors for the arithmetic coder: uniform, unigram (static frequencies) and a causal generator.

A prior maps the tokens before position i (int32 [i]) to the coder's integer table cdf [K + 1]
(`jaxtok.codec.freqs`). `fingerprint()` identifies the prior's exact numbers; the codec writes it into
every file so that decoding with another prior is refused instead of producing garbage.

Dimension names: N images, k tokens per image, K codebook size.
"""
from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from jaxtok.codec import freqs, vocab


def _digest(*parts: Any) -> bytes:
  h = hashlib.sha256()
  for p in parts:
    h.update(np.ascontiguousarray(p).tobytes() if isinstance(p, np.ndarray) else repr(p).encode())
  return h.digest()


class Uniform:
  """Every token costs log2(K) bits: the rate of the raw token ids (k * log2 K per image)."""

  def __init__(self, vocab_size: int, precision: int = freqs.PRECISION):
    if not isinstance(vocab_size, (int, np.integer)) or vocab_size < 2:
      raise ValueError(f"vocab_size must be an int >= 2, got {vocab_size!r}")
    self.vocab_size, self.precision = int(vocab_size), precision
    self._cdf = freqs.quantize(np.ones((self.vocab_size,)), precision)

  def cdf(self, prefix: np.ndarray) -> np.ndarray:
    del prefix
    return self._cdf

  def fingerprint(self) -> bytes:
    return _digest("uniform", self.vocab_size, self.precision)


class Unigram:
  """Static token frequencies (global, or one table per position) fitted on training tokens.

  p(t) = (count(t) + alpha) / (n + alpha K): `alpha` is the pseudo-count that keeps unseen tokens
  codable. With per_position=True, position i uses the counts of position i (positions beyond the
  fitted length use the global table).
  """

  def __init__(self, counts: np.ndarray, *, alpha: float = 0.05, precision: int = freqs.PRECISION):
    counts = np.asarray(counts)
    if counts.ndim not in (1, 2) or counts.shape[-1] < 2 or np.any(counts < 0):
      raise ValueError(f"counts must be non-negative [K] or [k, K] with K >= 2, got shape "
                       f"{counts.shape}")
    if not alpha > 0:
      raise ValueError(f"alpha must be > 0, got {alpha!r}")
    self.counts, self.alpha, self.precision = counts.astype(np.int64), float(alpha), precision
    self.vocab_size = counts.shape[-1]
    table = counts if counts.ndim == 2 else counts[None]
    self._cdfs = [freqs.quantize(c + self.alpha, precision) for c in table]
    self._global = freqs.quantize(table.sum(0) + self.alpha, precision)

  @classmethod
  def fit(cls, tokens: np.ndarray, vocab_size: int, *, per_position: bool = False,
          alpha: float = 0.05) -> "Unigram":
    """Counts of tokens int [N, k] in [0, vocab_size)."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or not np.issubdtype(tokens.dtype, np.integer):
      raise ValueError(f"tokens must be an integer array [N, k], got {tokens.dtype} {tokens.shape}")
    if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab_size):
      raise ValueError(f"tokens must lie in [0, {vocab_size}), got [{tokens.min()}, {tokens.max()}]")
    if per_position:
      counts = np.stack([np.bincount(col, minlength=vocab_size) for col in tokens.T])
    else:
      counts = np.bincount(tokens.reshape(-1), minlength=vocab_size)
    return cls(counts, alpha=alpha)

  def cdf(self, prefix: np.ndarray) -> np.ndarray:
    i = len(prefix)
    if len(self._cdfs) == 1:
      return self._cdfs[0]
    return self._cdfs[i] if i < len(self._cdfs) else self._global

  def fingerprint(self) -> bytes:
    return _digest("unigram", self.counts, self.alpha, self.precision)

  def save(self, path: str) -> None:
    np.savez(path, counts=self.counts, alpha=self.alpha, precision=self.precision)

  @classmethod
  def load(cls, path: str) -> "Unigram":
    with np.load(path) as f:
      return cls(f["counts"], alpha=float(f["alpha"]), precision=int(f["precision"]))


class Causal:
  """A causal token generator (`jaxtok.generators.gpt.GPT`, unconditional start) as the prior.

  With `id_map` (`jaxtok.codec.vocab.compact`) the generator predicts compact ids and the table is
  expanded to the whole codebook; without it the generator's codebook is the tokenizer's.

  Each table comes from one jitted forward pass over the prefix padded to the model's seq_len, one
  sequence at a time: the encoder and the decoder then run the same program on the same input, so
  their logits (and tables) are bit-identical on the same backend. Cost: k forward passes per image.
  """

  def __init__(self, graphdef: Any, params: Any, *, seq_len: int, vocab_size: int,
               id_map: np.ndarray | None = None, precision: int = freqs.PRECISION):
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    from flax import nnx  # pylint: disable=g-import-not-at-top

    self.seq_len, self.vocab_size, self.precision = int(seq_len), int(vocab_size), precision
    self._params = params
    if id_map is not None:
      id_map = np.asarray(id_map, np.int32)
      if id_map.shape != (self.vocab_size,) or id_map.min() < 0:
        raise ValueError(f"id_map must be int [{self.vocab_size}] >= 0, got shape {id_map.shape}")
    self._id_map = id_map

    @jax.jit
    def logits_at(p, tokens, i):
      return nnx.merge(graphdef, p)(tokens[None])[0, i]

    self._logits_at = logits_at
    self._jnp = jnp
    leaves = jax.tree.leaves(params)
    self._fingerprint = _digest("causal", self.seq_len, self.vocab_size, precision,
                                "map" if id_map is None else id_map, *[np.asarray(x) for x in leaves])

  def cdf(self, prefix: np.ndarray) -> np.ndarray:
    i = len(prefix)
    if i >= self.seq_len:
      raise ValueError(f"the prior models {self.seq_len} tokens, asked for position {i}")
    tokens = np.zeros((self.seq_len,), np.int32)
    tokens[:i] = prefix
    if self._id_map is not None:
      tokens = self._id_map[tokens]
    logits = np.asarray(self._logits_at(self._params, self._jnp.asarray(tokens), i), np.float32)
    if self._id_map is None:
      return freqs.from_logits(logits, self.precision)
    return freqs.quantize(vocab.expand(freqs.softmax(logits), self._id_map), self.precision)

  def fingerprint(self) -> bytes:
    return self._fingerprint
