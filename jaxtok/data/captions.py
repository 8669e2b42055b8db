"""Captions of the bundled photographs and a word-level vocabulary for tiny text-conditioned runs.

`CAPTIONS` gives one short caption per bundled photograph (`data.photos`: scikit-image's names, and
"china" / "flower" for scikit-learn's two), in the "a photo of ..." style of CLIP's prompts, so that a
text-conditioned tokenizer or generator can train locally with nothing downloaded. It is the one
caption table: `data.photo_captions` (captioned training batches) reads it too. `captions_for`
lists them in the order `photos.bundled_photos()` returns the photographs that exist in this install
(its `label` order).

`WordVocab` maps captions to int32 ids deterministically: lower-cased words split on non-letters,
the vocabulary the sorted set of the words of `CAPTIONS` after four specials (pad 0, bos 1, eos 2,
unk 3). It is for tiny local runs; real runs use a real tokenizer (CLIP BPE, T5 SentencePiece).

Dimension names: B captions, L length.
"""
from __future__ import annotations

import re
from typing import Iterable, Sequence

import numpy as np

CAPTIONS: dict[str, str] = {
    "astronaut": "a photo of an astronaut",
    "coffee": "a photo of a cup of coffee",
    "chelsea": "a photo of a cat",
    "rocket": "a photo of a rocket on a launch pad",
    "immunohistochemistry": "a microscope image of stained tissue",
    "motorcycle_left": "a photo of a motorcycle",
    "retina": "a photo of a retina",
    "hubble_deep_field": "a telescope image of galaxies",
    "china": "a photo of a temple",
    "flower": "a photo of a flower",
}
SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")
PAD, BOS, EOS, UNK = range(4)
_WORD = re.compile(r"[a-z]+")


def captions_for(names: Sequence[str]) -> list[str]:
  """The captions of photographs named `names` (e.g. those present in this install, in
  `bundled_photos` order); an unknown name raises ValueError naming the known ones."""
  unknown = [n for n in names if n not in CAPTIONS]
  if unknown:
    raise ValueError(f"no caption for photographs {unknown}; known: {sorted(CAPTIONS)}")
  return [CAPTIONS[n] for n in names]


def words(text: str) -> list[str]:
  """Lower-cased runs of letters of `text`."""
  if not isinstance(text, str):
    raise TypeError(f"caption must be a str, got {type(text).__name__}")
  return _WORD.findall(text.lower())


class WordVocab:
  """Word-level ids: specials 0..3, then the sorted words of `texts` (default: every caption).

  Attributes:
    words: tuple of the vocabulary's tokens (specials first); id = position.
  """

  def __init__(self, texts: Iterable[str] | None = None):
    texts = list(CAPTIONS.values()) if texts is None else list(texts)
    vocab = sorted({w for t in texts for w in words(t)})
    self.words = SPECIALS + tuple(vocab)
    self._ids = {w: i for i, w in enumerate(self.words)}

  def __len__(self) -> int:
    return len(self.words)

  def encode(self, texts: Sequence[str], length: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids int32 [B, L], mask bool [B, L]): <bos> words <eos>, cut to L (the <eos> kept last when
    cut), padded with <pad> (mask False); unknown words map to <unk>."""
    if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 2:
      raise ValueError(f"length must be an int >= 2 (room for <bos> and <eos>), got {length!r}")
    if isinstance(texts, str):
      raise TypeError("texts must be a sequence of captions, got a single str")
    ids = np.full((len(texts), length), PAD, np.int32)
    for b, text in enumerate(texts):
      row = [BOS] + [self._ids.get(w, UNK) for w in words(text)][:length - 2] + [EOS]
      ids[b, :len(row)] = row
    return ids, ids != PAD

  def decode(self, ids: Sequence[int]) -> str:
    """The words of one row of ids, without specials."""
    return " ".join(self.words[int(i)] for i in ids if int(i) >= len(SPECIALS))
