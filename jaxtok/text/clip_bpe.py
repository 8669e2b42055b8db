"""CLIP's byte-level BPE text tokenizer in pure Python, reading the official merges file.

The vocabulary of OpenAI CLIP / open_clip (`SimpleTokenizer`, file `bpe_simple_vocab_16e6.txt.gz`),
rebuilt from the merges file the user supplies (gzip or plain text, first line a header):
  vocab = the 256 byte symbols (GPT-2's bytes_to_unicode order), the same 256 + "</w>", one symbol
          per merge (first `max_merges` = 49152 - 256 - 2 merges, as the official), then
          "<start_of_text>", "<end_of_text>"  -> 49408 ids for the official file.
  text  -> html-unescaped twice, whitespace runs collapsed to one space, stripped, lower-cased
        -> split by the official pattern (special tokens, 's 't 're 've 'm 'll 'd, letter runs,
           single digits, runs of other non-space symbols)
        -> each piece's UTF-8 bytes as byte symbols, the last one marked "</w>", merged greedily by
           merge rank (lowest first, leftmost first) until no ranked pair is left (`text.bpe.merge`,
           shared with `hf_bpe`; the official loop's result for the official, trained merges).
  tokenize(texts, context_length=77) -> int32 [N, 77]: [SOT] + ids + [EOT], cut to the context with
  EOT kept as the last id, zero-padded (as open_clip's `tokenize`).

Two approximations, both documented: the official pattern uses the `regex` module's \\p{L} / \\p{N};
Python's `re` has neither, so letters are `[^\\W\\d_]` (Unicode alphabetic, plus the few numeric
non-decimal characters such as '²' that \\w also counts) and numbers `\\d` (decimal digits). For
ASCII and ordinary text in any script the split is the same. And `ftfy.fix_text` (mojibake repair)
is not applied: ftfy is not a dependency; it changes only broken text.
"""
from __future__ import annotations

import gzip
import html
import os
import re

import numpy as np

from jaxtok.text.bpe import bytes_to_unicode, byte_symbols, merge, unicode_to_bytes

SOT, EOT = "<start_of_text>", "<end_of_text>"
MAX_MERGES = 49152 - 256 - 2  # the official slice merges[1:49152-256-2+1]
CONTEXT_LENGTH = 77
_PATTERN = re.compile(
    r"<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|(?:[^\s\w]|_)+",
    re.IGNORECASE)


def clean(text: str) -> str:
  """Official cleaning without ftfy: html-unescape twice, collapse whitespace, strip, lower-case."""
  text = html.unescape(html.unescape(text)).strip()
  return re.sub(r"\s+", " ", text).strip().lower()


def read_merges(path: str | os.PathLike) -> list[tuple[str, str]]:
  """The merge pairs of a CLIP merges file (gzip or text; the first line is a header)."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise ValueError(f"CLIP BPE merges file {path!r} does not exist (the official one is "
                     f"bpe_simple_vocab_16e6.txt.gz, shipped with open_clip / OpenAI CLIP)")
  with open(path, "rb") as f:
    raw = f.read()
  if raw[:2] == b"\x1f\x8b":
    raw = gzip.decompress(raw)
  lines = raw.decode("utf-8").split("\n")[1:MAX_MERGES + 1]
  merges = []
  for i, line in enumerate(lines):
    parts = line.split()
    if not parts:
      continue
    if len(parts) != 2:
      raise ValueError(f"{path}: merge line {i + 2} must hold two symbols, got {line!r}")
    merges.append((parts[0], parts[1]))
  return merges


class CLIPTokenizer:
  """Text -> CLIP token ids (see the module docstring). `vocab_size` = 512 + merges + 2."""

  def __init__(self, merges: str | os.PathLike | list[tuple[str, str]]):
    if not isinstance(merges, list):
      merges = read_merges(merges)
    byte_symbols = list(bytes_to_unicode().values())
    vocab = byte_symbols + [s + "</w>" for s in byte_symbols] + ["".join(m) for m in merges]
    vocab += [SOT, EOT]
    self.encoder = {s: i for i, s in enumerate(vocab)}
    self.decoder = {i: s for s, i in self.encoder.items()}
    # (a, b) -> (rank, a + b); a pair listed twice keeps its last rank, as the official dict
    self.merges = {m: (i, m[0] + m[1]) for i, m in enumerate(merges)}
    self.sot_id, self.eot_id = self.encoder[SOT], self.encoder[EOT]
    self.vocab_size = len(vocab)
    self._cache = {SOT: SOT, EOT: EOT}

  def bpe(self, piece: str) -> list[str]:
    """The BPE symbols of one pre-tokenized piece (byte symbols), the last marked "</w>"."""
    if piece in self._cache:
      return self._cache[piece].split(" ")
    word = merge(list(piece[:-1]) + [piece[-1] + "</w>"], self.merges)
    self._cache[piece] = " ".join(word)
    return word

  def encode(self, text: str) -> list[int]:
    """The ids of `text` (no SOT/EOT)."""
    if not isinstance(text, str):
      raise TypeError(f"text must be a str, got {type(text).__name__}")
    ids = []
    for piece in _PATTERN.findall(clean(text)):
      ids.extend(self.encoder[s] for s in self.bpe(byte_symbols(piece)))
    return ids

  def decode(self, ids) -> str:
    """Ids -> text, words space-separated ("</w>" ends a word); SOT is dropped and decoding stops at
    the first EOT (so a padded row from `tokenize` decodes to its text)."""
    symbols = []
    for i in ids:
      i = int(i)
      if i == self.eot_id:
        break
      if i != self.sot_id:
        symbols.append(self.decoder[i])
    return _join("".join(symbols), unicode_to_bytes())

  def tokenize(self, texts: str | list[str], context_length: int = CONTEXT_LENGTH) -> np.ndarray:
    """int32 [N, context_length]: [SOT] + encode(text) + [EOT], cut with EOT kept last, 0-padded."""
    if isinstance(texts, str):
      texts = [texts]
    if isinstance(context_length, bool) or not isinstance(context_length, int) or context_length < 2:
      raise ValueError(f"context_length must be an int >= 2, got {context_length!r}")
    out = np.zeros((len(texts), context_length), np.int32)
    for row, text in enumerate(texts):
      ids = [self.sot_id] + self.encode(text) + [self.eot_id]
      if len(ids) > context_length:
        ids = ids[:context_length]
        ids[-1] = self.eot_id
      out[row, :len(ids)] = ids
    return out


def _join(text: str, byte_decoder: dict[str, int]) -> str:
  """Byte symbols (with "</w>" word ends) -> the UTF-8 text they spell, words space-separated."""
  words = text.split("</w>")
  data = b" ".join(bytes(byte_decoder[c] for c in w) for w in words)
  return data.decode("utf-8", errors="replace").strip()
