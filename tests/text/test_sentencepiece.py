"""`text.sentencepiece` against the official library's outputs (tests/fixtures/sentencepiece: a tiny
unigram model trained with nmt_nfkc, T5's id layout, and golden.json from sentencepiece 0.2.3)."""
import functools
import json
import os
import struct

import numpy as np
import pytest

from jaxtok.text import sentencepiece as S

HERE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures",
                    "sentencepiece")
MODEL = os.path.join(HERE, "tiny_unigram.model")


@functools.lru_cache(maxsize=None)
def _golden():
  with open(os.path.join(HERE, "golden.json"), encoding="utf-8") as f:
    return json.load(f)


@functools.lru_cache(maxsize=None)
def _sp():
  return S.SentencePiece.from_file(MODEL)


def test_header_fields_read_off_the_wire():
  sp = _sp()
  assert sp.vocab_size == _golden()["vocab_size"] == len(sp.proto.pieces)
  # T5's layout, as the fixture was trained: pad 0, eos 1, unk 2, no bos.
  assert (sp.pad_id, sp.eos_id, sp.unk_id, sp.bos_id) == (0, 1, 2, -1)
  assert [p[:1] + p[2:] for p in sp.proto.pieces[:4]] == [
      ("<pad>", S.CONTROL), ("</s>", S.CONTROL), ("<unk>", S.UNKNOWN), ("<sep>", S.USER_DEFINED)]
  spec = sp.proto.normalizer
  assert spec.name == "nmt_nfkc" and len(spec.precompiled_charsmap) > 100_000
  assert spec.add_dummy_prefix and spec.remove_extra_whitespaces and spec.escape_whitespaces
  normal = [s for _, s, k in sp.proto.pieces if k == S.NORMAL]
  assert all(s <= 0 for s in normal) and sp.unk_score == pytest.approx(min(normal) - 10, abs=1e-5)


@pytest.mark.parametrize("row", range(len(_golden()["strings"])))
def test_matches_the_official_library(row):
  """normalize, encode (ids and pieces) and decode(ids) equal sentencepiece's for every string:
  ascii, accents (composed and combining), full-width and compatibility characters (the charsmap),
  extra / odd whitespace, unknown characters (merged unk runs), the user-defined piece, empty."""
  g, sp = _golden()["strings"][row], _sp()
  assert sp.normalize(g["text"]) == g["normalized"]
  assert sp.encode(g["text"]) == g["ids"]
  assert sp.encode_pieces(g["text"]) == g["pieces"]
  assert sp.decode(g["ids"]) == g["decoded"]


def test_malformed_utf8_bytes_match_the_library():
  """A lone surrogate (Python's "surrogatepass" bytes) and stray bytes: U+FFFD per bad byte, as the
  C++ normaliser does; the str form of the surrogate gives the same ids."""
  for g in _golden()["bytes"]:
    assert _sp().encode(bytes.fromhex(g["utf8_hex"])) == g["ids"]
  assert _sp().encode("a\ud800b") == _golden()["bytes"][0]["ids"]


def test_the_golden_strings_cover_the_hard_cases():
  rows = {g["text"]: g for g in _golden()["strings"]}
  assert rows[""]["ids"] == [] and rows["   "]["ids"] == []
  assert rows["Ｆｕｌｌ ｗｉｄｔｈ ＡＢＣ １２３"]["normalized"] == "▁Full▁width▁ABC▁123"  # NFKC
  assert "\u0301" not in rows["cafe\u0301 composed by a combining accent"]["normalized"]
  assert rows["猫猫猫"]["ids"][-1] == 2 and rows["猫猫猫"]["ids"].count(2) == 1  # one merged unk
  assert 3 in rows["no<sep>spaces<sep>around"]["ids"]  # the user-defined piece wins inside words


def test_decode_of_encode_is_the_normalised_text():
  sp = _sp()
  for g in _golden()["strings"]:
    if sp.unk_id in g["ids"]:
      continue  # an unknown run decodes to " ⁇ ", not to its characters
    assert sp.decode(sp.encode(g["text"])) == g["normalized"].replace(S.SPACE, " ").lstrip(" ")


def test_t5_ids_append_eos_cut_and_pad():
  sp = _sp()
  text = "a photo of a cat sitting on a wooden table"
  pieces = sp.encode(text)
  ids, mask = sp.ids([text, "", text], 8)
  assert ids.dtype == np.int32 and mask.dtype == bool and ids.shape == (3, 8)
  np.testing.assert_array_equal(ids[0], pieces[:7] + [1])  # cut, </s> kept last
  np.testing.assert_array_equal(ids[1], [1, 0, 0, 0, 0, 0, 0, 0])  # empty caption: </s> then pad
  np.testing.assert_array_equal(mask[1], [True] + [False] * 7)
  long, lmask = sp.ids(["a cat"], 8)
  n = len(sp.encode("a cat"))
  np.testing.assert_array_equal(long[0, :n + 1], sp.encode("a cat") + [1])
  assert lmask[0].sum() == n + 1 and not long[0, n + 1:].any()


def test_float32_ties_and_tiny_models_built_by_hand():
  """A hand-made model (no charsmap): with scores a=-1, b=-1, ab=-2 both segmentations of "ab"
  score -2 (plus "▁" -1): the first path found is kept, as the C++ keeps it (strict >)."""
  def piece(p, score, kind=S.NORMAL):
    body = _ld(1, p.encode()) + _key(2, 5) + struct.pack("<f", score) + _key(3, 0) + bytes([kind])
    return _ld(1, body)
  model = (piece("<unk>", 0, S.UNKNOWN) + piece("▁", -1) + piece("a", -1) + piece("b", -1)
           + piece("ab", -2) + piece("▁ab", -2.5))
  sp = S.SentencePiece.from_bytes(model)
  assert sp.unk_id == 0 and sp.eos_id == -1 and sp.proto.normalizer == S.Normalizer()
  # "▁ab" -2.5 beats "▁" + "ab" (-3) and "▁" + "a" + "b" (-3).
  assert sp.encode_pieces("ab") == ["▁ab"]
  # "▁a▁ab" : "▁a" is no piece: "▁" "a" then "▁ab".
  assert sp.encode_pieces("a ab") == ["▁", "a", "▁ab"]
  # "▁abab": "▁ab" then "ab" (-4.5) ties "▁ab" "a" "b" (-4.5); the path through "ab" is found
  # first (from the earlier start), and a later equal score does not replace it.
  assert sp.encode_pieces("abab") == ["▁ab", "ab"]
  assert sp.encode("x y") == [1, 0, 1, 0]  # unknown x, y: the unk piece, not merged across "▁"
  with pytest.raises(ValueError, match="eos"):
    sp.ids(["ab"], 4)


def _key(field, wire):
  return bytes([field << 3 | wire])


def _ld(field, body):
  assert len(body) < 128
  return _key(field, 2) + bytes([len(body)]) + body


def test_bad_files_are_refused_with_a_clear_error(tmp_path):
  with pytest.raises(ValueError, match="is not a file"):
    S.SentencePiece.from_file(tmp_path / "missing.model")
  bad = tmp_path / "bad.model"
  bad.write_bytes(b"\x0a\xff\x01abc")  # a field that claims 255 bytes
  with pytest.raises(ValueError, match="not a readable SentencePiece model.*claims 255 bytes"):
    S.SentencePiece.from_file(bad)
  bad.write_text("this is plain text, not a model\n")
  with pytest.raises(ValueError, match="not a readable SentencePiece model"):
    S.SentencePiece.from_file(bad)
  with open(MODEL, "rb") as f:
    data = f.read()
  with pytest.raises(ValueError, match="truncated|claims"):
    S.SentencePiece.from_bytes(data[:len(data) // 2])
  with pytest.raises(ValueError, match="no pieces"):
    S.parse_model(b"")
  no_unk = _ld(1, _ld(1, b"a"))
  with pytest.raises(ValueError, match="exactly one unknown piece"):
    S.SentencePiece.from_bytes(no_unk)
  bpe = _ld(1, _ld(1, b"<unk>") + _key(3, 0) + b"\x02") + _ld(2, _key(3, 0) + b"\x02")
  with pytest.raises(ValueError, match="model_type != UNIGRAM"):
    S.SentencePiece.from_bytes(bpe)
  with pytest.raises(ValueError, match=r"ids must be ints in \[0, 261\), got 999"):
    _sp().decode([5, 999])
  with pytest.raises(TypeError, match="text must be a str or UTF-8 bytes, got int"):
    _sp().encode(3)
  with pytest.raises(ValueError, match="length must be an int >= 2"):
    _sp().ids(["a"], 1)


def test_textok_config_takes_caption_ids_from_the_spiece_model():
  """configs/textok.py spiece=PATH: text {"vocab": "spiece", "spiece": PATH}; caption_inputs gives
  the model's T5 ids (pieces, </s>, pad 0); the tiny T5's vocabulary is the model's."""
  from jaxtok.configs import textok as config_lib
  from jaxtok.tokenizers import textok
  tiny = config_lib.get_config(f"tiny,spiece={MODEL}")
  assert tiny.text.vocab == "spiece" and tiny.text.spiece == MODEL and tiny.text.length == 24
  assert tiny.model.t5.vocab_size == _sp().vocab_size
  full = config_lib.get_config(f"spiece={MODEL}")
  assert full.model.t5.vocab_size == 32128 and full.text.length == 32  # T5's embedding rows kept
  caps = ["a photo of a cat", "an astronaut floating in a snowy field"]
  out = textok.caption_inputs(tiny.text, caps)
  ids, mask = _sp().ids(caps, 24)
  np.testing.assert_array_equal(out["text_ids"], ids)
  np.testing.assert_array_equal(out["text_mask"], mask)
  assert out["text_ids"].max() < tiny.model.t5.vocab_size
  with pytest.raises(ValueError, match="needs config.text.spiece"):
    textok.caption_inputs({"vocab": "spiece", "length": 8}, caps)
  with pytest.raises(ValueError, match="is not a file"):
    config_lib.get_config("tiny,spiece=/nonexistent/spiece.model")
