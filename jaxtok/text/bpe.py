"""Byte-level BPE primitives shared by CLIP's tokenizer (`clip_bpe`) and HF `tokenizer.json` files
(`hf_bpe`): GPT-2's reversible byte <-> printable character table and the greedy merge loop.

The merge loop is the one of HF `tokenizers` (`models/bpe/word.rs`, `Word::merge_all`): a
min-queue of (rank, position) over adjacent pairs; the lowest-ranked pair is merged, leftmost first
among equal ranks, and the pairs it forms with its neighbours are queued. For merge tables in which
every merge's parts are made by earlier (lower-ranked) merges -- every trained table, CLIP's and
GPT-2's included -- this equals GPT-2 / CLIP's loop ("merge every occurrence of the lowest-ranked
pair, left to right, repeat"). The two differ only for hand-made tables where a merge ranks below
one that makes its part: with merges (a, a) rank 1 and (aa, a) rank 0, "aaaa" gives [aaa, a] here
(as `tokenizers`) and [aa, aa] in GPT-2's loop.
"""
from __future__ import annotations

import functools
import heapq
from typing import Hashable, Mapping, Sequence


@functools.lru_cache(maxsize=None)
def bytes_to_unicode() -> dict[int, str]:
  """GPT-2's reversible byte -> printable character map (the printable Latin-1 bytes map to
  themselves, the other 68 to chr(256 + i) in byte order)."""
  bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
      range(ord("®"), ord("ÿ") + 1))
  cs = list(bs)
  n = 0
  for b in range(256):
    if b not in bs:
      bs.append(b)
      cs.append(256 + n)
      n += 1
  return dict(zip(bs, map(chr, cs)))


@functools.lru_cache(maxsize=None)
def unicode_to_bytes() -> dict[str, int]:
  """The inverse of `bytes_to_unicode`: printable character -> byte."""
  return {c: b for b, c in bytes_to_unicode().items()}


def byte_symbols(text: str) -> str:
  """`text`'s UTF-8 bytes written as GPT-2's byte characters (one character per byte)."""
  table = bytes_to_unicode()
  return "".join(table[b] for b in text.encode("utf-8"))


def merge(symbols: Sequence[Hashable],
          merges: Mapping[tuple[Hashable, Hashable], tuple[int, Hashable]]) -> list:
  """Greedy BPE over one word.

  Args:
    symbols: the word's initial symbols (strings or ids), in order.
    merges: (left, right) -> (rank, merged symbol); lower ranks merge first.
  Returns:
    the symbols after no ranked adjacent pair is left (see the module docstring for the order).
  """
  sym = list(symbols)
  n = len(sym)
  if n < 2:
    return sym
  nxt = list(range(1, n + 1))
  nxt[-1] = -1
  prv = list(range(-1, n - 1))
  alive = [True] * n
  queue = []
  for i in range(n - 1):
    m = merges.get((sym[i], sym[i + 1]))
    if m is not None:
      queue.append((m[0], i, m[1]))
  heapq.heapify(queue)
  while queue:
    _, pos, new = heapq.heappop(queue)
    right = nxt[pos]
    if not alive[pos] or right == -1:
      continue
    m = merges.get((sym[pos], sym[right]))
    if m is None or m[1] != new:  # an entry made stale by an earlier merge at pos or right
      continue
    sym[pos] = new
    alive[right] = False
    nxt[pos] = nxt[right]
    if nxt[right] != -1:
      prv[nxt[right]] = pos
    left = prv[pos]
    if left != -1 and (m := merges.get((sym[left], new))) is not None:
      heapq.heappush(queue, (m[0], left, m[1]))
    if nxt[pos] != -1 and (m := merges.get((new, sym[nxt[pos]]))) is not None:
      heapq.heappush(queue, (m[0], pos, m[1]))
  return [s for s, a in zip(sym, alive) if a]
