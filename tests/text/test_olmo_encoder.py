"""text.olmo_encoder: the release's prompt batching (left padding to the longest row with pad_id,
mask 1 on real tokens, max_length handed to the tokenizer) around the converted tiny HF OLMo
fixture, with a stand-in tokenizer of the `hf_bpe.ByteLevelBPE` protocol."""
import os
import sys
import types

import jax.numpy as jnp
import numpy as np
import pytest

import jaxtok.text
from jaxtok.convert import olmo as convert_olmo
from jaxtok.nn import olmo
from jaxtok.text import olmo_encoder as E

TINY = os.path.join(os.path.dirname(__file__), "..", "fixtures", "official", "olmo_tiny", "plain")


class WordTokenizer:
  """Stand-in: one id per word (10 + its length, capped below the fixture's vocab 256), truncated
  on the right to max_length; records the max_length it was given."""

  pad_id = 1

  def __init__(self):
    self.calls = []

  def encode(self, text, max_length=None):
    self.calls.append(max_length)
    ids = [10 + min(len(w), 200) for w in text.split()]
    return ids if max_length is None else ids[:max_length]


@pytest.fixture(scope="module")
def encoder():
  cfg, params = convert_olmo.load(TINY)
  return E.OlmoTextEncoder(cfg, params, WordTokenizer())


def test_left_padding_mask_and_features(encoder):
  texts = ["a bb ccc dddd", "xy z", ""]
  out = encoder(texts)
  ids, mask = encoder.ids(texts)
  np.testing.assert_array_equal(ids, [[11, 12, 13, 14], [1, 1, 12, 11], [1, 1, 1, 1]])
  np.testing.assert_array_equal(out["mask"], [[1, 1, 1, 1], [0, 0, 1, 1], [0, 0, 0, 0]])
  assert out["mask"].dtype == np.int32
  assert out["features"].shape == (2, 3, 4, 32) and out["features"].dtype == np.float32
  assert np.isfinite(out["features"]).all()  # the '' row (all padding) too
  want = olmo.hidden_states_fn(encoder.config)(encoder.params, jnp.asarray(ids), jnp.asarray(mask))
  np.testing.assert_allclose(out["features"], np.asarray(want), atol=1e-6)
  # A prompt's real-token features do not depend on the batch it is padded into.
  alone = encoder(["xy z"])["features"]
  np.testing.assert_allclose(out["features"][:, 1, 2:], alone[:, 0], atol=1e-4)


def test_max_length_goes_to_the_tokenizer_and_is_enforced(encoder):
  encoder.tokenizer.calls.clear()
  out = encoder(["a b c d e f"], max_length=3)
  assert encoder.tokenizer.calls == [3]
  assert out["mask"].shape == (1, 3)
  encoder([""]), encoder(["a"])
  assert encoder.tokenizer.calls[-1] == E.MAX_LENGTH == 128

  class Untruncated(WordTokenizer):
    def encode(self, text, max_length=None):
      return [5] * 4

  bad = E.OlmoTextEncoder(encoder.config, encoder.params, Untruncated())
  with pytest.raises(ValueError, match="returned 4 ids \\(it must truncate\\)"):
    bad(["x"], max_length=2)
  with pytest.raises(ValueError, match="max_length must be an int >= 1, got 0"):
    encoder(["x"], max_length=0)
  with pytest.raises(TypeError, match="texts must be a non-empty sequence of str"):
    encoder("x")


def test_all_empty_batch_gets_one_masked_column(encoder):
  out = encoder(["", ""])
  np.testing.assert_array_equal(out["mask"], [[0], [0]])
  assert out["features"].shape == (2, 2, 1, 32) and np.isfinite(out["features"]).all()


def test_tokenizer_contract_is_checked(encoder):
  tok = WordTokenizer()
  tok.pad_id = 999
  with pytest.raises(ValueError, match=r"pad_id must be an int in \[0, 256\).*got 999"):
    E.OlmoTextEncoder(encoder.config, encoder.params, tok)
  with pytest.raises(TypeError, match="tokenizer must have encode"):
    E.OlmoTextEncoder(encoder.config, encoder.params, object())

  class Wide(WordTokenizer):
    def encode(self, text, max_length=None):
      return [300]

  with pytest.raises(ValueError, match=r"ids outside \[0, 256\)"):
    E.OlmoTextEncoder(encoder.config, encoder.params, Wide())(["x"])


def test_from_files_reads_the_checkpoint_and_tokenizer_json(tmp_path, monkeypatch):
  seen = []

  class FakeBPE(WordTokenizer):
    @classmethod
    def from_file(cls, path):
      seen.append(path)
      return cls()

  fake = types.SimpleNamespace(ByteLevelBPE=FakeBPE)
  # Both routes of `from jaxtok.text import hf_bpe` (the package attribute once the real module
  # has been imported, sys.modules otherwise) lead to the stand-in.
  monkeypatch.setitem(sys.modules, "jaxtok.text.hf_bpe", fake)
  monkeypatch.setattr(jaxtok.text, "hf_bpe", fake, raising=False)
  tok_json = tmp_path / "tokenizer.json"
  tok_json.write_text("{}")
  enc = E.OlmoTextEncoder.from_files(TINY, tok_json)
  assert seen == [os.fspath(tok_json)] and enc.config["vocab_size"] == 256
  assert enc(["a b"])["features"].shape == (2, 1, 2, 32)
  with pytest.raises(ValueError, match="need the tokenizer.json"):
    E.OlmoTextEncoder.from_files(TINY, tmp_path / "missing.json")
  with pytest.raises(ValueError, match="holds no config.json"):
    E.OlmoTextEncoder.from_files(tmp_path, tok_json)
  # A config section naming the files goes the same way.
  enc2 = E.from_config({"olmo_checkpoint": TINY, "tokenizer_json": os.fspath(tok_json)})
  np.testing.assert_array_equal(enc2(["a b"])["features"], enc(["a b"])["features"])


def test_from_config_smoke_mode_and_refusals():
  tower = dict(width=16, depth=2, num_heads=2, mlp_hidden=32, vocab_size=260)
  enc = E.from_config({"random_init_for_smoke_test": True, "olmo": tower})
  out = enc(["hi", "héllo"])
  ids, mask = enc.ids(["hi"])
  np.testing.assert_array_equal(ids, [[ord("h") + 3, ord("i") + 3]])
  assert out["features"].shape == (2, 2, 6, 16) and out["mask"][0].tolist() == [0] * 4 + [1] * 2
  with pytest.raises(ValueError, match=r"unknown OLMo text config key\(s\) \['clip'\]"):
    E.from_config({"clip": {}})
  with pytest.raises(ValueError, match="needs text.olmo"):
    E.from_config({"random_init_for_smoke_test": True})
  with pytest.raises(ValueError, match="vocab_size must be >= 259"):
    E.from_config({"random_init_for_smoke_test": True, "olmo": dict(tower, vocab_size=64)})
  with pytest.raises(ValueError, match="need the tokenizer.json"):
    E.from_config({})


def test_pad_to_rounds_the_length_without_changing_real_tokens(encoder):
  texts = ["a photo of a cat", "dog"]
  plain, padded = encoder(texts), encoder(texts, pad_to=8)
  t = plain["mask"].shape[1]
  assert t == 5 and padded["mask"].shape == (2, 8) and padded["features"].shape[2] == 8
  np.testing.assert_array_equal(padded["mask"][:, -t:], plain["mask"])
  assert not padded["mask"][:, :-t].any()
  real = plain["mask"].astype(bool)
  np.testing.assert_allclose(padded["features"][:, :, -t:][:, real], plain["features"][:, real],
                             atol=1e-5)
  with pytest.raises(ValueError, match="pad_to must be an int >= 1, got 0"):
    encoder.ids(texts, pad_to=0)
