"""HF `tokenizer.json` byte-level BPE tokenizers (GPT-2 / GPT-NeoX / OLMo style) in pure Python: no
`tokenizers`, `transformers` or `regex` dependency.

  tok = ByteLevelBPE.from_file("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
  tok.encode("a photo of a cat", max_length=128)     # list of int (post-processor's tokens in)
  ids, mask = tok.batch(prompts, max_length=128)     # int32 [B, T] each, left-padded to the longest
  tok.decode(ids[0][mask[0] == 1])                   # text

What HF `tokenizers` 0.22.2 does (`tokenizer/mod.rs`, `added_vocabulary.rs`, `models/bpe`,
`pre_tokenizers/byte_level.rs`, `processors/template.rs`) and this module re-does:
  added tokens  split out first, on the raw text for tokens with normalized=false, then (after the
             normaliser) on each remaining normalised piece for tokens with normalized=true (their
             contents normalised too). Matching is leftmost-longest and non-overlapping; a
             single_word token only counts with no word character (Rust `regex` \\w) on either side;
             lstrip / rstrip take the whitespace to the token's left / right into the token.
  normalizer NFC, NFKC, Lowercase (character by character, as Rust: no final-sigma rule), a Sequence
             of those, or none.
  pre_tokenizer ByteLevel: a space prepended to each piece that does not start with one
             (add_prefix_space), then GPT-2's pattern (use_regex)
                 's|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+
             (Oniguruma; case-sensitive contractions), each match's UTF-8 bytes as GPT-2's byte
             characters. Python's `re` has no \\p{..}: the classes are built from `unicodedata`
             (L* and N* general categories; \\s = White_Space = 9-13, 0x85, Zs, Zl, Zp --
             Python's own \\s would also take the separators 0x1C-0x1F).
  model      BPE: vocab, merges ("a b" strings or [a, b] lists, "#version" lines skipped), the merge
             loop of `text.bpe.merge`, ignore_merges (a whole piece in the vocab is one token),
             continuing_subword_prefix / end_of_word_suffix, unk_token + fuse_unk (a character not
             in the vocab becomes unk, or is dropped when there is none, as the Rust).
  post_processor ByteLevel (ids unchanged), TemplateProcessing (the "single" template's special
             tokens around $A), a Sequence of those, or none.
  truncation `max_length` counts the post-processor's tokens: the pieces' ids are cut (right side)
             to max_length minus those, then the template is applied.
  decoder    ByteLevel: every token's characters back to bytes (a token with a character outside the
             byte table, e.g. an added token, as its own UTF-8), joined, decoded with U+FFFD for
             invalid UTF-8; none: tokens joined with spaces.

With `tokenizer_config.json` the tokenizer is what `transformers` 4.57.6 `AutoTokenizer` builds
(`PreTrainedTokenizerFast.__init__`, `GPTNeoXTokenizerFast`): `add_prefix_space` from the config
(default false) replaces the ByteLevel pre-tokenizer's; special tokens (bos / eos / unk / sep /
pad / cls / mask / additional_special_tokens, `special_tokens_map.json` overriding the config) that
are not yet added tokens are added as special ones; for GPTNeoXTokenizer (also when tokenizer_class
is absent: AutoTokenizer picks GPTNeoXTokenizerFast for OLMo) bos / eos / unk default to
"<|endoftext|>" and the post-processor becomes [bos if add_bos_token] $A [eos if add_eos_token]
(both default false). `pad_id` is the config's / map's pad_token, else the tokenizer.json padding
section's. The tokenizer.json truncation section is not read: `max_length` is an argument.

Refused with the option named: byte_fallback, BPE dropout, other models / normalizers /
pre-tokenizers (Sequence, Split, Digits, Metaspace: GPT-NeoX / OLMo use ByteLevel alone) /
post-processors (Bert / Roberta processing) / decoders, a config `added_tokens_decoder` entry that
differs from tokenizer.json's (transformers would re-add it). Pair templates are ignored (single
texts only). Not reproduced: offsets; transformers' decode clean-up of spaces before punctuation
(`decode` is `tokenizers`' decode); characters assigned after Python's `unicodedata` version (14.0
for Python 3.11; against the Rust classes every code point assigned in 14.0 agrees, checked by the
fixture script's --check).

Dimension names: B texts, T tokens.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import sys
import unicodedata
from typing import Any, Mapping, Sequence

import numpy as np

from jaxtok.text import bpe

SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token",
                "mask_token")  # transformers' SPECIAL_TOKENS_ATTRIBUTES order
ADDED_FIELDS = ("content", "special", "single_word", "lstrip", "rstrip", "normalized")
NEOX_CLASSES = ("GPTNeoXTokenizer", "GPTNeoXTokenizerFast")
NEOX_DEFAULT = "<|endoftext|>"
NORMALIZERS = ("NFC", "NFKC", "Lowercase", "Sequence")
# Characters in Unicode's Other_Alphabetic that are symbols (So), not marks: Rust `regex`'s \w
# (Alphabetic + M + Nd + Pc + Join_Control) takes them, the general categories alone would not.
_OTHER_ALPHABETIC_SO = ((0x24B6, 0x24E9), (0x1F130, 0x1F149), (0x1F150, 0x1F169),
                        (0x1F170, 0x1F189))
_WHITE_SPACE = "\t\n\x0b\x0c\r\x85"  # + Zs, Zl, Zp (Unicode White_Space)


@dataclasses.dataclass(frozen=True)
class AddedToken:
  """One `added_tokens` entry of tokenizer.json (or one added from tokenizer_config.json)."""
  content: str
  id: int
  special: bool = False
  single_word: bool = False
  lstrip: bool = False
  rstrip: bool = False
  normalized: bool = True


# ---------------------------------------------------------------- character classes


def _class_body(runs: list[tuple[int, int]]) -> str:
  """A regex character-class body from inclusive code point runs."""
  esc = lambda cp: re.escape(chr(cp))
  return "".join(esc(a) if a == b else f"{esc(a)}-{esc(b)}" for a, b in runs)


@functools.lru_cache(maxsize=None)
def _classes() -> tuple[str, str, str]:
  """(letters \\p{L}, numbers \\p{N}, white space \\s) as class bodies, built once (~0.5 s)."""
  runs = {"L": [], "N": [], "S": []}
  for cp in range(sys.maxunicode + 1):
    c = chr(cp)
    cat = unicodedata.category(c)
    key = cat[0] if cat[0] in "LN" else (
        "S" if c in _WHITE_SPACE or cat in ("Zs", "Zl", "Zp") else None)
    if key is None:
      continue
    if runs[key] and runs[key][-1][1] == cp - 1:
      runs[key][-1] = (runs[key][-1][0], cp)
    else:
      runs[key].append((cp, cp))
  return _class_body(runs["L"]), _class_body(runs["N"]), _class_body(runs["S"])


@functools.lru_cache(maxsize=None)
def gpt2_pattern() -> re.Pattern:
  """GPT-2's pre-tokenizer pattern with \\p{L}, \\p{N}, \\s spelled out as Unicode classes."""
  L, N, S = _classes()
  return re.compile(rf"'s|'t|'re|'ve|'m|'ll|'d| ?[{L}]+| ?[{N}]+| ?[^{S}{L}{N}]+|[{S}]+(?![^{S}])"
                    rf"|[{S}]+")


@functools.lru_cache(maxsize=None)
def _space_runs() -> tuple[re.Pattern, re.Pattern]:
  """(leading, trailing) White_Space runs, for lstrip / rstrip."""
  S = _classes()[2]
  return re.compile(rf"[{S}]*"), re.compile(rf"[{S}]*\Z")


def is_word_char(c: str) -> bool:
  """Rust `regex`'s Unicode \\w: Alphabetic, marks, decimal digits, connector punctuation, ZWJ."""
  cat = unicodedata.category(c)
  if cat[0] in "LM" or cat in ("Nd", "Nl", "Pc") or c in "\u200c\u200d":
    return True
  return any(a <= ord(c) <= b for a, b in _OTHER_ALPHABETIC_SO)


# ---------------------------------------------------------------- pipeline pieces (pure)


def normalize(text: str, steps: Sequence[str]) -> str:
  """`text` through the normaliser steps ("NFC", "NFKC", "Lowercase") in order."""
  for step in steps:
    if step == "Lowercase":
      text = "".join(c.lower() for c in text)
    else:
      text = unicodedata.normalize(step, text)
  return text


def find_added(text: str, pattern: re.Pattern | None, by_content: Mapping[str, AddedToken]
               ) -> list[tuple[str, int | None]]:
  """Splits `text` around the added tokens `pattern` finds (as `AddedVocabulary::find_matches`).

  Returns (piece, token id or None) covering the text; a matched token's piece includes the
  whitespace its lstrip / rstrip took."""
  if pattern is None or not text:
    return [(text, None)]
  lead, trail = _space_runs()
  out, offset = [], 0
  for m in pattern.finditer(text):
    start, stop = m.span()
    tok = by_content[m.group()]
    if tok.single_word:
      if (start > 0 and is_word_char(text[start - 1])) or (stop < len(text) and
                                                           is_word_char(text[stop])):
        continue
    if tok.lstrip:
      start = max(trail.search(text, 0, start).start(), offset)
    if tok.rstrip:
      stop = lead.match(text, stop).end()
    if offset < start:
      out.append((text[offset:start], None))
    out.append((text[start:stop], tok.id))
    offset = stop
  if offset != len(text):
    out.append((text[offset:], None))
  return out


def _added_pattern(contents: Sequence[str]) -> re.Pattern | None:
  """Leftmost-longest alternation of `contents` (longest first: `re` takes the first that fits)."""
  contents = sorted({c for c in contents if c}, key=len, reverse=True)
  return re.compile("|".join(map(re.escape, contents))) if contents else None


# ---------------------------------------------------------------- tokenizer.json parsing


def _load_json(path, what: str) -> dict:
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise ValueError(f"{what} {path!r} does not exist")
  with open(path, encoding="utf-8") as f:
    data = json.load(f)
  if not isinstance(data, dict):
    raise ValueError(f"{what} {path!r} must hold a JSON object, got {type(data).__name__}")
  return data


def _normalizer_steps(spec) -> tuple[str, ...]:
  if spec is None:
    return ()
  kind = spec.get("type")
  if kind == "Sequence":
    return tuple(s for sub in spec.get("normalizers", []) for s in _normalizer_steps(sub))
  if kind not in NORMALIZERS:
    raise ValueError(f"normalizer {kind!r} is not supported (supported: null, "
                     f"{', '.join(NORMALIZERS)})")
  return (kind,)


def _pre_tokenizer(spec) -> tuple[bool, bool]:
  """(add_prefix_space, use_regex) of a ByteLevel pre-tokenizer (the only one supported)."""
  kind = None if spec is None else spec.get("type")
  if kind != "ByteLevel":
    raise ValueError(f"pre_tokenizer {kind!r} is not supported (supported: ByteLevel)")
  return bool(spec.get("add_prefix_space", True)), bool(spec.get("use_regex", True))


def _template(spec) -> tuple[list[int], list[int]]:
  """(ids before $A, ids after $A) of a post-processor's "single" template."""
  kind = None if spec is None else spec.get("type")
  if kind is None or kind == "ByteLevel":
    return [], []
  if kind == "Sequence":
    before, after = [], []
    for sub in spec.get("processors", []):
      b, a = _template(sub)
      before, after = before + b, after + a  # every processor but Template adds nothing
    return before, after
  if kind != "TemplateProcessing":
    raise ValueError(f"post_processor {kind!r} is not supported (supported: null, ByteLevel, "
                     f"TemplateProcessing, Sequence of those)")
  before, after, seen = [], [], False
  for piece in spec["single"]:
    if "Sequence" in piece:
      if piece["Sequence"]["id"] != "A" or seen:
        raise ValueError(f"TemplateProcessing single template must hold $A once, got "
                         f"{spec['single']!r}")
      seen = True
    else:
      name = piece["SpecialToken"]["id"]
      if name not in spec.get("special_tokens", {}):
        raise ValueError(f"TemplateProcessing special token {name!r} has no ids")
      (after if seen else before).extend(int(i) for i in spec["special_tokens"][name]["ids"])
  return before, after


def _check_model(model: Mapping[str, Any]) -> None:
  kind = model.get("type", "BPE")
  if kind != "BPE":
    raise ValueError(f"model type {kind!r} is not supported (supported: BPE)")
  if model.get("byte_fallback"):
    raise ValueError("model.byte_fallback=true is not supported (byte-level BPE needs no fallback)")
  if model.get("dropout") not in (None, 0, 0.0):
    raise ValueError(f"model.dropout must be null or 0 (deterministic encoding), got "
                     f"{model.get('dropout')!r}")


def _merge_pairs(merges: Sequence[Any]) -> list[tuple[str, str]]:
  """Merges as pairs, from either the "a b" string or the [a, b] list format."""
  pairs = []
  for i, m in enumerate(merges):
    if isinstance(m, str):
      if m.startswith("#version"):
        continue
      parts = m.split(" ")
    else:
      parts = list(m)
    if len(parts) != 2:
      raise ValueError(f"model.merges[{i}] must be two symbols, got {m!r}")
    pairs.append((parts[0], parts[1]))
  return pairs


def _special_value(value) -> dict | None:
  """A tokenizer_config / special_tokens_map value (str, AddedToken dict or None) as a dict."""
  if value is None:
    return None
  if isinstance(value, str):
    return {"content": value}
  if isinstance(value, dict) and isinstance(value.get("content"), str):
    return {k: v for k, v in value.items() if k != "__type"}
  raise ValueError(f"a special token must be a string or an AddedToken dict, got {value!r}")


# ---------------------------------------------------------------- the tokenizer


class ByteLevelBPE:
  """Text <-> ids of an HF byte-level BPE `tokenizer.json` (see the module docstring).

  Build with `from_file` / `from_dict`. Attributes: `vocab_size` (largest id + 1), `pad_id` (int or
  None), `added_tokens` (content -> AddedToken), `prefix_ids` / `suffix_ids` (the post-processor's).
  """

  def __init__(self, spec: Mapping[str, Any], config: Mapping[str, Any] | None = None,
               special_map: Mapping[str, Any] | None = None):
    model = spec.get("model")
    if not isinstance(model, dict) or "vocab" not in model or "merges" not in model:
      raise ValueError("tokenizer.json must hold a BPE model with vocab and merges")
    _check_model(model)
    self.vocab: dict[str, int] = {str(k): int(v) for k, v in model["vocab"].items()}
    self.prefix = model.get("continuing_subword_prefix") or ""
    self.suffix = model.get("end_of_word_suffix") or ""
    self.ignore_merges = bool(model.get("ignore_merges", False))
    self.unk_id = self.vocab.get(model["unk_token"]) if model.get("unk_token") else None
    if model.get("unk_token") and self.unk_id is None:
      raise ValueError(f"model.unk_token {model['unk_token']!r} is not in the vocab")
    self.fuse_unk = bool(model.get("fuse_unk", False))
    self.merges: dict[tuple[int, int], tuple[int, int]] = {}
    for rank, (a, b) in enumerate(_merge_pairs(model["merges"])):
      new = a + b[len(self.prefix):]
      for s in (a, b, new):
        if s not in self.vocab:
          raise ValueError(f"model.merges[{rank}] ({a!r}, {b!r}): {s!r} is not in the vocab")
      self.merges[(self.vocab[a], self.vocab[b])] = (rank, self.vocab[new])
    self.steps = _normalizer_steps(spec.get("normalizer"))
    self.add_prefix_space, self.use_regex = _pre_tokenizer(spec.get("pre_tokenizer"))
    decoder = spec.get("decoder")
    if decoder is not None and decoder.get("type") != "ByteLevel":
      raise ValueError(f"decoder {decoder.get('type')!r} is not supported (supported: null, "
                       f"ByteLevel)")
    self.byte_decoder = decoder is not None
    self.added_tokens: dict[str, AddedToken] = {}
    for entry in spec.get("added_tokens") or []:
      tok = AddedToken(**{k: entry[k] for k in ("id", *ADDED_FIELDS) if k in entry})
      self.added_tokens[tok.content] = tok
    self.prefix_ids, self.suffix_ids = _template(spec.get("post_processor"))
    padding = spec.get("padding") or {}
    self.pad_id = int(padding["pad_id"]) if "pad_id" in padding else None
    if config is not None:
      self._apply_transformers_config(dict(config), dict(special_map or {}))
    elif special_map:
      raise ValueError("special_tokens_map needs tokenizer_config too (transformers reads both)")
    self._refresh()

  # -- construction helpers

  @classmethod
  def from_file(cls, tokenizer_json, tokenizer_config_json=None,
                special_tokens_map_json=None) -> "ByteLevelBPE":
    """Reads tokenizer.json (and, to tokenize as transformers' AutoTokenizer, its
    tokenizer_config.json and special_tokens_map.json)."""
    spec = _load_json(tokenizer_json, "tokenizer.json")
    config = (None if tokenizer_config_json is None else
              _load_json(tokenizer_config_json, "tokenizer_config.json"))
    special_map = (None if special_tokens_map_json is None else
                   _load_json(special_tokens_map_json, "special_tokens_map.json"))
    return cls(spec, config, special_map)

  @classmethod
  def from_dict(cls, spec: Mapping[str, Any], config: Mapping[str, Any] | None = None,
                special_map: Mapping[str, Any] | None = None) -> "ByteLevelBPE":
    """From the parsed JSON objects (tokenizer.json, tokenizer_config.json, special_tokens_map)."""
    return cls(spec, config, special_map)

  def _token_id(self, content: str) -> int | None:
    tok = self.added_tokens.get(content)
    return tok.id if tok is not None else self.vocab.get(content)

  def _apply_transformers_config(self, config: dict, special_map: dict) -> None:
    """What `AutoTokenizer.from_pretrained` changes on top of tokenizer.json (module docstring)."""
    cls = config.get("tokenizer_class")
    neox = cls is None or cls in NEOX_CLASSES
    if not neox and cls != "PreTrainedTokenizerFast":
      raise ValueError(f"tokenizer_config tokenizer_class {cls!r} is not supported (supported: "
                       f"{', '.join(NEOX_CLASSES)}, PreTrainedTokenizerFast)")
    for key, entry in (config.get("added_tokens_decoder") or {}).items():
      tok = self.added_tokens.get(entry.get("content"))
      want = {k: v for k, v in entry.items() if k in ADDED_FIELDS}
      if tok is None or tok.id != int(key) or want != {k: getattr(tok, k) for k in want}:
        raise ValueError(f"tokenizer_config added_tokens_decoder[{key}] = {entry!r} differs from "
                         f"tokenizer.json's added token {tok!r} (re-adding is not supported)")
    specials = {k: config[k] for k in (*SPECIAL_KEYS, "additional_special_tokens") if k in config}
    for key, value in special_map.items():
      if key in (*SPECIAL_KEYS, "additional_special_tokens"):
        specials[key] = value
    if neox:
      for key in ("bos_token", "eos_token", "unk_token"):
        specials.setdefault(key, NEOX_DEFAULT)
    named = {k: _special_value(specials.get(k)) for k in SPECIAL_KEYS}
    extra = [_special_value(v) for v in specials.get("additional_special_tokens") or []]
    for value in [named[k] for k in SPECIAL_KEYS] + extra:
      if value is None or value["content"] in self.added_tokens:
        continue
      # transformers adds it as a special token: its vocab id, else the next free id
      ident = self.vocab.get(value["content"])
      if ident is None:
        ident = max([*self.vocab.values(), *(t.id for t in self.added_tokens.values())]) + 1
      flags = {k: bool(value[k]) for k in ("single_word", "lstrip", "rstrip", "normalized")
               if k in value}
      flags.setdefault("normalized", False)
      self.added_tokens[value["content"]] = AddedToken(value["content"], ident, True, **flags)
    # transformers rebuilds the ByteLevel pre-tokenizer with the config's value (default false)
    self.add_prefix_space = bool(config.get("add_prefix_space", False))
    if named["pad_token"] is not None:
      self.pad_id = self._token_id(named["pad_token"]["content"])
    if neox:
      ends = []
      for key, flag in (("bos_token", "add_bos_token"), ("eos_token", "add_eos_token")):
        if not config.get(flag, False):
          ends.append([])
          continue
        if named[key] is None or self._token_id(named[key]["content"]) is None:
          raise ValueError(f"tokenizer_config {flag}=true but {key} is {named[key]!r}")
        ends.append([self._token_id(named[key]["content"])])
      self.prefix_ids, self.suffix_ids = ends

  def _refresh(self) -> None:
    toks = list(self.added_tokens.values())
    self.by_content = {t.content: t for t in toks}
    self.raw_pattern = _added_pattern([t.content for t in toks if not t.normalized])
    normalized = {normalize(t.content, self.steps): t for t in toks if t.normalized}
    self.by_normalized = {**normalized}
    self.norm_pattern = _added_pattern(list(normalized))
    self.id_to_token = {i: s for s, i in self.vocab.items()}
    self.id_to_token.update({t.id: t.content for t in toks})
    self.special_ids = {t.id for t in toks if t.special}
    self.vocab_size = max(self.id_to_token) + 1
    self._cache: dict[str, list[int]] = {}
    if self.use_regex:
      gpt2_pattern()  # build the Unicode classes now rather than on the first call

  # -- encoding

  def _bpe(self, piece: str) -> list[int]:
    """Ids of one pre-tokenized piece (byte characters), as `BPE::tokenize` (`model.rs`)."""
    if self.ignore_merges and piece in self.vocab:
      return [self.vocab[piece]]
    if piece in self._cache:
      return self._cache[piece]
    ids, unk = [], None  # unk: a pending run of unknown characters (fuse_unk joins them)
    for i, c in enumerate(piece):
      s = (self.prefix if i else "") + c + (self.suffix if i == len(piece) - 1 else "")
      if s in self.vocab:
        if unk is not None:
          ids.append(unk)
          unk = None
        ids.append(self.vocab[s])
      elif self.unk_id is not None:
        if unk is not None and not self.fuse_unk:
          ids.append(unk)
        unk = self.unk_id
    if unk is not None:
      ids.append(unk)
    ids = bpe.merge(ids, self.merges)
    if len(self._cache) < 100_000:
      self._cache[piece] = ids
    return ids

  def _piece_ids(self, text: str) -> list[int]:
    """Ids of one normalised stretch of text between added tokens."""
    if self.add_prefix_space and not text.startswith(" "):
      text = " " + text
    pieces = gpt2_pattern().findall(text) if self.use_regex else [text]
    return [i for p in pieces for i in self._bpe(bpe.byte_symbols(p))]

  def tokenize_ids(self, text: str) -> list[int]:
    """Ids of `text` before truncation and the post-processor."""
    if not isinstance(text, str):
      raise TypeError(f"text must be a str, got {type(text).__name__}")
    ids = []
    for raw, ident in find_added(text, self.raw_pattern, self.by_content):
      if ident is not None:
        ids.append(ident)
        continue
      normed = normalize(raw, self.steps)
      for piece, ident2 in find_added(normed, self.norm_pattern, self.by_normalized):
        if ident2 is not None:
          ids.append(ident2)
        elif piece:
          ids.extend(self._piece_ids(piece))
    return ids

  def encode(self, text: str, max_length: int | None = None,
             add_special_tokens: bool = True) -> list[int]:
    """Token ids of `text`, as HF `tokenizer(text, truncation=True, max_length=max_length)`.

    Args:
      text: the string.
      max_length: None (no truncation) or the most ids returned, the post-processor's included.
      add_special_tokens: whether the post-processor's tokens are added.
    Returns:
      list of int.
    """
    ids = self.tokenize_ids(text)
    before, after = (self.prefix_ids, self.suffix_ids) if add_special_tokens else ([], [])
    if max_length is not None:
      n = len(before) + len(after)
      if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < n:
        raise ValueError(f"max_length must be None or an int >= {n} (the post-processor's "
                         f"tokens), got {max_length!r}")
      ids = ids[:max_length - n]
    return before + ids + after

  def batch(self, texts: Sequence[str], max_length: int = 128, padding_side: str = "left"
            ) -> tuple[np.ndarray, np.ndarray]:
    """HF's `tokenizer(texts, truncation=True, padding=True, max_length=max_length)`.

    Args:
      texts: B strings (a single str is one text).
      max_length: the most ids per row, the post-processor's included.
      padding_side: "left" (Instella-T2I's) or "right".
    Returns:
      (ids int32 [B, T], mask int32 [B, T]): T = the longest row; pads are `pad_id` with mask 0.
    """
    if isinstance(texts, str):
      texts = [texts]
    if padding_side not in ("left", "right"):
      raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    rows = [self.encode(t, max_length) for t in texts]
    width = max((len(r) for r in rows), default=0)
    if any(len(r) < width for r in rows) and self.pad_id is None:
      raise ValueError("padding needs a pad token: tokenizer.json has no padding section and "
                       "tokenizer_config / special_tokens_map name no pad_token")
    ids = np.full((len(rows), width), -1 if self.pad_id is None else self.pad_id, np.int32)
    mask = np.zeros((len(rows), width), np.int32)
    for b, row in enumerate(rows):
      sl = slice(width - len(row), width) if padding_side == "left" else slice(0, len(row))
      ids[b, sl] = row
      mask[b, sl] = 1
    return ids, mask

  # -- decoding

  def decode(self, ids, skip_special_tokens: bool = False) -> str:
    """Text of `ids` (as `tokenizers`' `Tokenizer.decode`; `transformers`' decode also tidies
    spaces before punctuation when clean_up_tokenization_spaces is set, which this does not).

    Args:
      ids: ints (list or int array [T]).
      skip_special_tokens: drop the special added tokens.
    """
    tokens = []
    for i in np.asarray(ids, dtype=np.int64).reshape(-1).tolist():
      if i not in self.id_to_token:
        raise ValueError(f"token id {i} is not in the vocabulary (0..{self.vocab_size - 1})")
      if not (skip_special_tokens and i in self.special_ids):
        tokens.append(self.id_to_token[i])
    if not self.byte_decoder:
      return " ".join(tokens)
    table, data = bpe.unicode_to_bytes(), bytearray()
    for t in tokens:
      if all(c in table for c in t):
        data.extend(table[c] for c in t)
      else:
        data.extend(t.encode("utf-8"))
    return data.decode("utf-8", errors="replace")
