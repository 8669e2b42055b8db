"""Command-line plumbing shared by the tools: per-tool flag registries and batched jitted calls.

Every tool keeps its flags in its own `absl.flags.FlagValues` (not the global registry), so several
tools can be imported into one process (the tests call `main(argv)` of each) without their flag
names colliding, and `main(argv)` parses argv afresh on every call (defaults restored first).
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Any, Callable, Sequence

import numpy as np
from absl import flags


def repo_root_on_path(tool_file: str) -> None:
  """Puts the repository root (the tools' parent) on sys.path, so `configs.*` imports resolve."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(tool_file)))
  if root not in sys.path:
    sys.path.insert(0, root)


def parse(flag_values: flags.FlagValues, argv: Sequence[str], doc: str | None = None) -> None:
  """Parses argv[1:] into `flag_values` from the defaults; `--help` prints the flags and exits."""
  argv = list(argv) if argv else ["tool"]
  if any(a in ("--help", "-h", "--helpshort", "--helpfull") for a in argv[1:]):
    print((doc or "").strip() + "\n\n" + flag_values.get_help())
    raise SystemExit(0)
  flag_values.unparse_flags()
  try:
    rest = flag_values(argv)
  except flags.Error as err:
    raise SystemExit(f"{argv[0]}: {err}\nPass --help for the flags.") from None
  if len(rest) > 1:
    raise SystemExit(f"{argv[0]}: unexpected positional arguments {rest[1:]}")


def setup_logging() -> None:
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  # orbax logs every checkpoint phase at INFO through absl; keep its warnings and errors only.
  logging.getLogger("absl").setLevel(logging.WARNING)


def batched(fn: Callable[[np.ndarray], Any], array: np.ndarray, batch_size: int) -> np.ndarray:
  """np.concatenate of fn(chunk) over chunks of `batch_size` rows; the last chunk is padded by
  repeating its last row (one compiled shape for the whole run) and the padding dropped."""
  if batch_size < 1:
    raise ValueError(f"--batch_size must be >= 1, got {batch_size}")
  array = np.asarray(array)
  outs = []
  for i in range(0, len(array), batch_size):
    chunk = array[i:i + batch_size]
    n = len(chunk)
    if n < batch_size:
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - n, axis=0)])
    outs.append(np.asarray(fn(chunk))[:n])
  return np.concatenate(outs) if outs else np.zeros((0,), np.float32)


def check_num_tokens(tokenizer: Any, num_tokens: int | None, *, flag: str = "--num_tokens") -> int | None:
  """num_tokens (None = all) valid for the tokenizer, or a ValueError naming the flag."""
  k = tokenizer.max_tokens
  if num_tokens is None or k is None:
    return num_tokens
  name = tokenizer.config.get("name")
  if name == "vqgan" and num_tokens != k:
    raise ValueError(f"{flag}: the 2D VQGAN always uses its full grid of {k} tokens, got {num_tokens}")
  if not 1 <= num_tokens <= k:
    raise ValueError(f"{flag} must be in [1, {k}] for this {name} tokenizer (K = {k}), got {num_tokens}")
  return int(num_tokens)
