"""Captions of the bundled photographs and the word-level vocabulary (`data.captions`)."""
import numpy as np
import pytest

from jaxtok.data import captions, photos


def test_every_bundled_photograph_has_a_caption():
  names = list(photos.SKIMAGE_PHOTOS) + ["china", "flower"]
  assert sorted(names) == sorted(captions.CAPTIONS)
  assert captions.captions_for(["chelsea"]) == ["a photo of a cat"]
  with pytest.raises(ValueError, match="no caption for photographs \\['dog'\\]"):
    captions.captions_for(["dog"])


def test_vocab_is_deterministic_and_round_trips():
  v1, v2 = captions.WordVocab(), captions.WordVocab()
  assert v1.words == v2.words and v1.words[:4] == captions.SPECIALS
  assert list(v1.words[4:]) == sorted(v1.words[4:])
  ids, mask = v1.encode(["a photo of a cat", "A PHOTO of a zebra!"], length=8)
  assert ids.dtype == np.int32 and ids.shape == (2, 8)
  assert ids[0, 0] == captions.BOS and ids[0, 6] == captions.EOS and ids[0, 7] == captions.PAD
  assert v1.decode(ids[0]) == "a photo of a cat"
  assert ids[1, 5] == captions.UNK  # "zebra" is not in any caption
  np.testing.assert_array_equal(mask, ids != captions.PAD)
  cut, _ = v1.encode(["a photo of a cat"], length=4)
  assert list(cut[0]) == [captions.BOS, v1.words.index("a"), v1.words.index("photo"), captions.EOS]
  with pytest.raises(ValueError, match="length must be an int >= 2"):
    v1.encode(["a cat"], length=1)
  with pytest.raises(TypeError, match="single str"):
    v1.encode("a cat", length=4)
