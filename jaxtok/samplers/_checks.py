"""Argument checks shared by the samplers: each raises ValueError naming the argument, what was
expected and what was given. Checks on array values run only on concrete arrays (under jit the
values are unknown; shapes are still checked while tracing)."""
import jax
import numpy as np


def is_concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


def positive_int(name, value):
  """A Python int >= 1 (bools rejected); returns it."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"{name} must be an int >= 1, got {value!r}")
  return int(value)


def temperature(value, *, allow_zero=True):
  """temperature >= 0 (0 = greedy) or, with allow_zero=False, > 0 (skipped when traced)."""
  if not is_concrete(value):
    return
  if allow_zero and not value >= 0:
    raise ValueError(f"temperature must be >= 0 (0 = greedy), got {value}")
  if not allow_zero and not value > 0:
    raise ValueError(f"temperature must be > 0, got {value}")


def tokens_in_range(name, tokens, vocab, mask_id=None):
  """Concrete tokens must lie in [0, vocab) (or equal mask_id when given)."""
  if not is_concrete(tokens):
    return
  t = np.asarray(tokens)
  bad = (t < 0) | (t >= vocab)
  if mask_id is not None:
    bad &= t != mask_id
  if bad.any():
    extra = f" or equal mask_id={mask_id}" if mask_id is not None else ""
    raise ValueError(f"{name} must be ids in [0, {vocab}){extra}, got {int(t[bad].flat[0])} "
                     f"at index {tuple(int(i) for i in np.argwhere(bad)[0])}")


def mask_id(value, vocab):
  """A mask id is an int in [0, vocab]: inside the vocabulary (its logit is then forbidden) or
  the first id after it (the MaskGIT BERT layout). Negative ids (google-research/maskgit's -1)
  would wrap around in jnp indexing, so they are refused."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value <= vocab:
    raise ValueError(f"mask_id must be an int in [0, {vocab}] (vocabulary size {vocab}), got {value!r}")
  return int(value)
