"""HF tokenizer.json byte-level BPE against ids made by `tokenizers` 0.22.2 and `transformers`
4.57.6 (tests/fixtures/hf_bpe, built by make_hf_bpe_fixture.py.txt), plus hand-derived cases."""
import json
import os
import unicodedata

import numpy as np
import pytest

from jaxtok.text import bpe, hf_bpe

D = os.path.join(os.path.dirname(__file__), "..", "fixtures", "hf_bpe")
COMBOS = {"base+config": ("tokenizer.json", "tokenizer_config.json"),
          "base+config_eos": ("tokenizer.json", "tokenizer_config_eos.json"),
          "eos+config": ("tokenizer_eos.json", "tokenizer_config.json"),
          "base+config_extra": ("tokenizer.json", "tokenizer_config_extra.json")}


def _path(name):
  return os.path.join(D, name)


@pytest.fixture(scope="module")
def golden():
  with open(_path("golden.json"), encoding="utf-8") as f:
    return json.load(f)


@pytest.fixture(scope="module")
def toks():
  names = {"base": "tokenizer.json", "list": "tokenizer_list.json", "eos": "tokenizer_eos.json"}
  out = {k: hf_bpe.ByteLevelBPE.from_file(_path(n)) for k, n in names.items()}
  for key, (tj, tc) in COMBOS.items():
    out[key] = hf_bpe.ByteLevelBPE.from_file(_path(tj), _path(tc), _path("special_tokens_map.json"))
  return out


def _spec(**model):
  """A minimal tokenizer.json (ByteLevel pre-tokenizer and decoder, no added tokens)."""
  m = {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
       "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
       "ignore_merges": False, "vocab": {"a": 0}, "merges": []}
  m.update(model)
  level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": True}
  return {"added_tokens": [], "normalizer": None, "pre_tokenizer": level, "post_processor": None,
          "decoder": level, "model": m}


@pytest.mark.parametrize("variant,key", [("base", "base"), ("list", "base"), ("eos", "eos")])
def test_every_tokenizers_golden(toks, golden, variant, key):
  # "list" (merges as [a, b]) must give the ids of "base" (merges as "a b")
  tok = toks[variant]
  assert len(golden["texts"]) >= 60
  for i, text in enumerate(golden["texts"]):
    assert tok.encode(text) == golden["tokenizers"][key][i], (variant, text)
    assert tok.encode(text, max_length=16) == golden["tokenizers"][key + "_trunc16"][i], text


def test_transformers_batches_left_padded(toks, golden):
  # AutoTokenizer(..., model_max_length=128, padding_side="left")(texts, truncation=True,
  # padding=True, max_length=N): GPTNeoX's post-processor rewrite adds / drops the EOS of the json
  texts = golden["texts"]
  for key in COMBOS:
    want = golden["transformers"][key]
    assert toks[key].pad_id == want["pad_token_id"] == 1
    for max_length in (128, 16):
      for group, rows in zip(golden["groups"], want[str(max_length)]):
        ids, mask = toks[key].batch([texts[i] for i in group], max_length=max_length)
        assert ids.dtype == np.int32 and mask.dtype == np.int32
        assert ids.tolist() == rows["input_ids"], (key, max_length, group)
        assert mask.tolist() == rows["attention_mask"], (key, max_length, group)
  assert toks["base+config_eos"].suffix_ids == [0] and toks["eos+config"].suffix_ids == []
  assert toks["eos"].suffix_ids == [0]
  # special tokens of the config that were no added tokens get transformers' ids (next free ones)
  extra, want = toks["base+config_extra"], golden["transformers"]["base+config_extra"]["added"]
  assert {t: extra.added_tokens[t].id for t in want} == want == {"<|begin|>": 1006, "the": 1007,
                                                                 "<|new|>": 1008}
  assert extra.prefix_ids == [1006]


def test_decode_matches_tokenizers_and_round_trips(toks, golden):
  tok = toks["base"]
  for i, ids in enumerate(golden["tokenizers"]["base"]):
    text = golden["texts"][i]
    assert tok.decode(ids) == golden["decode"]["base"][i]
    assert tok.decode(np.asarray(ids), skip_special_tokens=True) == golden["decode"]["base_skip"][i]
    # <|mask|>'s lstrip / rstrip swallow the spaces around it; the added token "café" decodes as
    # bytes too ('é' is a byte character: 0xE9 alone is not UTF-8), as in tokenizers
    if "<|mask|>" not in text and "café" not in unicodedata.normalize("NFC", text):
      assert tok.decode(ids) == unicodedata.normalize("NFC", text)  # NFC, then lossless bytes
  # one id alone may end mid-character: U+FFFD as Rust's from_utf8_lossy
  for i, text in golden["decode"]["single"].items():
    assert tok.decode([int(i)]) == text


def test_gpt2_pattern_by_hand():
  split = hf_bpe.gpt2_pattern().findall
  # contractions are case-sensitive; a space run keeps its last space for the next word;
  # a tab is not the optional ' ' prefix
  assert split("Hello world's  DON'T 123\tok?! 你好") == [
      "Hello", " world", "'s", " ", " DON", "'", "T", " 123", "\t", "ok", "?!", " 你好"]
  assert split("x  \n\n  ") == ["x", "  \n\n  "]  # \s+(?!\S): a trailing run stays whole
  assert split("²½Ⅻ٣") == ["²½Ⅻ٣"]  # \p{N} is every number category, not only decimals
  assert split("e\u0301") == ["e", "\u0301"]  # a combining mark is neither letter nor number
  # 0x1C..0x1F are str.isspace() in Python but not Unicode White_Space (Rust / Oniguruma \s)
  assert split("a\x1cb") == ["a", "\x1c", "b"]
  assert split("a\u3000\u00a0b") == ["a", "\u3000", "\u00a0", "b"]  # only ' ' prefixes a word


def test_added_token_matching_by_hand():
  toks = {"<m>": hf_bpe.AddedToken("<m>", 7, lstrip=True, rstrip=True),
          "<mm>": hf_bpe.AddedToken("<mm>", 8),
          "W": hf_bpe.AddedToken("W", 9, single_word=True)}
  pat = hf_bpe._added_pattern(list(toks))
  assert hf_bpe.find_added("a  <m>  b", pat, toks) == [("a", None), ("  <m>  ", 7), ("b", None)]
  assert hf_bpe.find_added("<mm><m>", pat, toks) == [("<mm>", 8), ("<m>", 7)]  # longest first
  # single_word: no word character (Rust \w: letters, marks, digits, _) on either side
  assert hf_bpe.find_added("W aW W_ W.", pat, toks) == [("W", 9), (" aW W_ ", None), ("W", 9),
                                                        (".", None)]
  assert hf_bpe.find_added("", pat, toks) == [("", None)]


def test_merge_order_is_tokenizers_queue():
  # GPT-2's loop would merge every (a, a) first: [aa, aa]; tokenizers' queue merges the new
  # (aa, a) of rank 0 at once: [aaa, a] (the package gives [2, 0] for this table)
  m = {("a", "a"): (1, "aa"), ("aa", "a"): (0, "aaa")}
  assert bpe.merge(list("aaaa"), m) == ["aaa", "a"]
  tok = hf_bpe.ByteLevelBPE.from_dict(_spec(vocab={"a": 0, "aa": 1, "aaa": 2},
                                            merges=[["aa", "a"], ["a", "a"]]))
  assert tok.encode("aaaa") == [2, 0] and tok.encode("aaaaa") == [2, 1]


def test_model_options_by_hand():
  # (values checked against tokenizers 0.22.2 with the same dicts)
  vocab = {"<unk>": 0, "a": 1, "##a": 2, "##b": 3, "ab": 4, "b": 5}
  for fuse, want in ((True, [4, 0, 2]), (False, [4, 0, 0, 2])):
    tok = hf_bpe.ByteLevelBPE.from_dict(_spec(vocab=vocab, merges=[["a", "##b"]], unk_token="<unk>",
                                              continuing_subword_prefix="##", fuse_unk=fuse))
    assert tok.encode("abxxa") == want  # a ##b ##x ##x ##a: x unknown, (a, ##b) -> "ab"
  tok = hf_bpe.ByteLevelBPE.from_dict(_spec(vocab={"a": 0, "b": 1, "b</w>": 2, "ab</w>": 3},
                                            merges=["a b</w>"], end_of_word_suffix="</w>"))
  assert tok.encode("ab") == [3] and tok.encode("abb") == [0, 1, 2]
  v = {"a": 0, "b": 1, "c": 2, "abc": 3, "ab": 4}
  assert hf_bpe.ByteLevelBPE.from_dict(_spec(vocab=v, merges=[["a", "b"]])).encode("abc") == [4, 2]
  assert hf_bpe.ByteLevelBPE.from_dict(_spec(vocab=v, merges=[["a", "b"]], ignore_merges=True)
                                      ).encode("abc") == [3]
  # no unk token: an unknown character is dropped, as the Rust
  assert hf_bpe.ByteLevelBPE.from_dict(_spec(vocab=v, merges=[["a", "b"]])).encode("xab") == [4]


def test_truncation_counts_the_template_and_batch_layout(toks):
  tok = toks["eos"]
  full = tok.encode("a photo of a cat")
  assert full[-1] == 0 and tok.encode("a photo of a cat", max_length=3) == full[:2] + [0]
  assert tok.encode("a photo of a cat", add_special_tokens=False) == full[:-1]
  assert tok.encode("a photo", max_length=1) == [0]
  ids, mask = tok.batch(["a", "a photo of a cat"], max_length=4)
  assert ids.shape == mask.shape == (2, 4) and mask.sum(1).tolist() == [len(tok.encode("a")), 4]
  assert ids[0, 0] == tok.pad_id == 1 and mask[0].tolist() == [0, 0, 1, 1]  # left padding
  right, rmask = tok.batch(["a", "a photo of a cat"], max_length=4, padding_side="right")
  assert rmask[0].tolist() == [1, 1, 0, 0] and right[1].tolist() == ids[1].tolist()
  assert tok.batch("a")[0].shape == (1, 2)


def test_bad_input_is_refused(toks, tmp_path):
  base = toks["base"]
  with pytest.raises(ValueError, match="max_length must be None or an int >= 1"):
    toks["eos"].encode("a", max_length=0)
  with pytest.raises(TypeError, match="text must be a str"):
    base.encode(None)
  with pytest.raises(ValueError, match="padding_side must be"):
    base.batch(["a"], padding_side="middle")
  with pytest.raises(ValueError, match="padding needs a pad token"):
    base.batch(["a", "a b c"])  # tokenizer.json alone names no pad token
  with pytest.raises(ValueError, match="token id 5000 is not in the vocabulary"):
    base.decode([5000])
  with pytest.raises(ValueError, match="does not exist"):
    hf_bpe.ByteLevelBPE.from_file(tmp_path / "missing.json")
  bad = [({"byte_fallback": True}, "byte_fallback"), ({"dropout": 0.1}, "dropout"),
         ({"merges": ["a"]}, r"merges\[0\]"), ({"merges": [["a", "q"]]}, "'q' is not in the vocab")]
  for model, msg in bad:
    with pytest.raises(ValueError, match=msg):
      hf_bpe.ByteLevelBPE.from_dict(_spec(**model))
  for field, value, msg in (("normalizer", {"type": "BertNormalizer"}, "BertNormalizer"),
                            ("pre_tokenizer", {"type": "Metaspace"}, "Metaspace"),
                            ("post_processor", {"type": "RobertaProcessing"}, "RobertaProcessing"),
                            ("decoder", {"type": "WordPiece"}, "WordPiece")):
    with pytest.raises(ValueError, match=msg):
      hf_bpe.ByteLevelBPE.from_dict({**_spec(), field: value})
  with pytest.raises(ValueError, match="tokenizer_class 'LlamaTokenizer'"):
    hf_bpe.ByteLevelBPE.from_dict(_spec(), {"tokenizer_class": "LlamaTokenizer"})
  with pytest.raises(ValueError, match="add_eos_token=true but eos_token"):
    hf_bpe.ByteLevelBPE.from_dict(_spec(), {"add_eos_token": True, "eos_token": None})
