"""The compact vocabulary of a causal prior: the codes seen in training, plus one escape id.

A tokenizer's codebook can be far larger than what it uses (the main job's FSQ has 64,000 codes and
uses a few hundred), and a softmax over the whole codebook would dominate the prior's cost. The prior
therefore predicts compact ids: code c seen in training -> its rank among the seen codes, every unseen
code -> the escape id S (shared, so each unseen code gets p(escape) / #unseen).
"""
from __future__ import annotations

import numpy as np


def compact(tokens: np.ndarray, vocab_size: int) -> np.ndarray:
  """id_map int32 [vocab_size]: seen codes -> 0..S-1 (in code order), unseen codes -> S."""
  tokens = np.asarray(tokens)
  if not np.issubdtype(tokens.dtype, np.integer) or tokens.size == 0:
    raise ValueError(f"tokens must be a non-empty integer array, got {tokens.dtype} {tokens.shape}")
  if tokens.min() < 0 or tokens.max() >= vocab_size:
    raise ValueError(f"tokens must lie in [0, {vocab_size}), got [{tokens.min()}, {tokens.max()}]")
  seen = np.zeros((vocab_size,), bool)
  seen[tokens.reshape(-1)] = True
  return np.where(seen, np.cumsum(seen) - 1, seen.sum()).astype(np.int32)


def size(id_map: np.ndarray) -> int:
  """Compact vocabulary size: S, plus one when some code is unseen (the escape id)."""
  return int(np.max(id_map)) + 1


def expand(probs: np.ndarray, id_map: np.ndarray) -> np.ndarray:
  """Compact probabilities [S'] -> codebook probabilities [vocab_size] (escape mass shared evenly)."""
  group = np.bincount(id_map, minlength=probs.shape[0])
  return probs[id_map] / group[id_map]
