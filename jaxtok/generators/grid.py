"""The 2D token grid of a generator over a tokenizer's row-major token sequence (VQGAN-style tokens).

A sequence of N tokens is an h x w grid read row by row: token (i, j) is sequence index i * w + j.
`grid_shape(seq_len, grid_width)` gives (h, w); grid_width 0 means a square grid.
"""
from __future__ import annotations

import math


def grid_shape(seq_len: int, grid_width: int = 0) -> tuple[int, int]:
  """(h, w) with h * w == seq_len; grid_width 0: the square root of seq_len.

  Raises:
    ValueError: naming seq_len / grid_width when they do not make a grid.
  """
  if grid_width == 0:
    w = math.isqrt(seq_len)
    if w * w != seq_len:
      raise ValueError(f"seq_len must be a square number when grid_width is 0 (square grid), got "
                       f"seq_len={seq_len}; set grid_width")
    return w, w
  if grid_width < 0 or seq_len % grid_width:
    raise ValueError(f"grid_width must divide seq_len={seq_len} (or be 0 for a square grid), got "
                     f"grid_width={grid_width}")
  return seq_len // grid_width, grid_width
