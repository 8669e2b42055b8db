"""SentencePiece unigram models (a `.model` file, e.g. T5's `spiece.model`) read and applied in pure
Python: no `sentencepiece` or protobuf dependency.

  sp = SentencePiece.from_file("spiece.model")
  sp.encode("A photo of a cat")          # piece ids (list of int, no </s>)
  ids, mask = sp.ids(captions, 32)       # T5 inputs: pieces + </s>, cut / padded to 32
  sp.decode(ids[0])                      # "A photo of a cat"

What the official C++ library does, and this module re-does (google/sentencepiece, `src/`):
  file       a serialized `ModelProto` (sentencepiece_model.proto), read field by field off the
             protobuf wire format: pieces (piece, score float32, type), the trainer spec's model
             type and unk / bos / eos / pad ids and unk surface, and the normaliser spec (name,
             precompiled_charsmap, add_dummy_prefix, remove_extra_whitespaces, escape_whitespaces).
  normalise  (normalizer.cc) at each position the longest user-defined piece, else the longest key
             of the precompiled charsmap (its rewrite), else one UTF-8 character as is; leading
             spaces dropped, runs of spaces squeezed, trailing spaces dropped
             (remove_extra_whitespaces), a space prepended (add_dummy_prefix), spaces written as
             U+2581 "▁" (escape_whitespaces). The charsmap is <uint32 LE trie size><darts-clone
             double-array trie: uint32 units><NUL-terminated rewrites>; a trie value is the offset
             of the rewrite in the string blob.
  encode     (unigram_model.cc `EncodeOptimized`) Viterbi over the normalised UTF-8 bytes: the path
             of pieces with the largest total score (float32 sums, the first path found kept on
             ties), a user-defined piece scoring len_bytes * max_score - 0.1, and a character no
             piece of its own length covers becoming the unk piece with score min_score - 10
             (min / max over NORMAL pieces; max starts at FLT_MIN as in the C++); runs of unk
             pieces are merged into one (sentencepiece_processor.cc).
  decode     control pieces -> "", unk -> the unk surface (" ⁇ "), "▁" -> " ", the leading space of
             the first piece(s) dropped as the C++ does.

Not supported (refused when the file asks for them, with the option named): BPE / word / char
models, byte_fallback, treat_whitespace_as_suffix, a denormaliser charsmap; sampling (subword
regularisation) and n-best are not implemented. T5's files use none of them.

Dimension names: B texts, L length.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import struct
from typing import Iterator, Sequence

import numpy as np

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
PIECE_TYPES = {NORMAL: "normal", UNKNOWN: "unknown", CONTROL: "control",
               USER_DEFINED: "user_defined", UNUSED: "unused", BYTE: "byte"}
UNIGRAM = 1
SPACE = "\u2581"
UNK_PENALTY = 10.0  # unigram_model.cc kUnkPenalty
FLT_MIN = float(np.finfo(np.float32).tiny)  # the C++'s initial max_score_
DEFAULT_UNK_SURFACE = " \u2047 "


def _f32(x: float) -> float:
  """x rounded to float32 (the C++ keeps scores and path sums in float)."""
  return struct.unpack("<f", struct.pack("<f", x))[0]


# ---------------------------------------------------------------- protobuf wire format


def _varint(buf: bytes, pos: int, what: str) -> tuple[int, int]:
  value, shift = 0, 0
  while True:
    if pos >= len(buf):
      raise ValueError(f"{what}: truncated varint at byte {pos} of {len(buf)}")
    b = buf[pos]
    pos += 1
    value |= (b & 0x7F) << shift
    if not b & 0x80:
      return value, pos
    shift += 7
    if shift > 63:
      raise ValueError(f"{what}: varint longer than 10 bytes at byte {pos}")


def _fields(buf: bytes, what: str) -> Iterator[tuple[int, int, object]]:
  """(field number, wire type, value) of a serialized message: value an int (varint), bytes
  (length-delimited) or 4 / 8 raw bytes (fixed32 / fixed64). Raises ValueError when `buf` is not
  well-formed protobuf (`what` names the message)."""
  pos = 0
  while pos < len(buf):
    key, pos = _varint(buf, pos, what)
    field, wire = key >> 3, key & 7
    if field == 0:
      raise ValueError(f"{what}: field number 0 at byte {pos} (not a protobuf message)")
    if wire == 0:
      value, pos = _varint(buf, pos, what)
    elif wire in (1, 5):
      size = 8 if wire == 1 else 4
      if pos + size > len(buf):
        raise ValueError(f"{what}: truncated fixed{size * 8} field {field}")
      value, pos = buf[pos:pos + size], pos + size
    elif wire == 2:
      size, pos = _varint(buf, pos, what)
      if pos + size > len(buf):
        raise ValueError(f"{what}: field {field} claims {size} bytes, only {len(buf) - pos} left")
      value, pos = buf[pos:pos + size], pos + size
    else:
      raise ValueError(f"{what}: unsupported wire type {wire} (field {field}) at byte {pos}")
    yield field, wire, value


def _expect(field: int, wire: int, want: int, what: str) -> None:
  if wire != want:
    raise ValueError(f"{what}: field {field} has wire type {wire}, expected {want}")


def _text(value: bytes, what: str) -> str:
  try:
    return value.decode("utf-8")
  except UnicodeDecodeError:
    raise ValueError(f"{what} is not UTF-8: {value[:40]!r}") from None


def _signed32(value: int) -> int:
  """An int32 field's varint (negatives are sign-extended to 64 bits on the wire)."""
  value &= (1 << 64) - 1
  return value - (1 << 64) if value >= 1 << 63 else value


@dataclasses.dataclass(frozen=True)
class Normalizer:
  """`NormalizerSpec`: the fields that drive normalisation (proto defaults when absent)."""
  name: str = ""
  precompiled_charsmap: bytes = b""
  add_dummy_prefix: bool = True
  remove_extra_whitespaces: bool = True
  escape_whitespaces: bool = True


@dataclasses.dataclass(frozen=True)
class Trainer:
  """The `TrainerSpec` fields encoding and decoding read (proto defaults when absent)."""
  model_type: int = UNIGRAM
  unk_id: int = 0
  bos_id: int = 1
  eos_id: int = 2
  pad_id: int = -1
  byte_fallback: bool = False
  treat_whitespace_as_suffix: bool = False
  unk_surface: str = DEFAULT_UNK_SURFACE
  bos_piece: str = "<s>"
  eos_piece: str = "</s>"
  pad_piece: str = "<pad>"


@dataclasses.dataclass(frozen=True)
class ModelProto:
  """A parsed `.model`: pieces (piece, score float32, type), trainer and normaliser specs, and
  whether a denormaliser charsmap is present."""
  pieces: tuple[tuple[str, float, int], ...]
  trainer: Trainer
  normalizer: Normalizer
  has_denormalizer: bool = False


def _parse_piece(buf: bytes, index: int) -> tuple[str, float, int]:
  what = f"piece {index}"
  piece, score, kind = None, 0.0, NORMAL
  for field, wire, value in _fields(buf, what):
    if field == 1:
      _expect(field, wire, 2, what)
      piece = _text(value, what)
    elif field == 2:
      _expect(field, wire, 5, what)
      score = struct.unpack("<f", value)[0]
    elif field == 3:
      _expect(field, wire, 0, what)
      if value not in PIECE_TYPES:
        raise ValueError(f"{what}: unknown piece type {value}, expected one of {sorted(PIECE_TYPES)}")
      kind = value
  if not piece:
    raise ValueError(f"{what}: a piece must be a non-empty string, got {piece!r}")
  return piece, score, kind


def _parse_normalizer(buf: bytes) -> Normalizer:
  what, kw = "normalizer_spec", {}
  for field, wire, value in _fields(buf, what):
    if field == 1:
      _expect(field, wire, 2, what)
      kw["name"] = _text(value, what + ".name")
    elif field == 2:
      _expect(field, wire, 2, what)
      kw["precompiled_charsmap"] = bytes(value)
    elif field in (3, 4, 5):
      _expect(field, wire, 0, what)
      kw[{3: "add_dummy_prefix", 4: "remove_extra_whitespaces", 5: "escape_whitespaces"}[field]] = (
          bool(value))
  return Normalizer(**kw)


_TRAINER_INTS = {3: "model_type", 40: "unk_id", 41: "bos_id", 42: "eos_id", 43: "pad_id"}
_TRAINER_BOOLS = {35: "byte_fallback", 24: "treat_whitespace_as_suffix"}
_TRAINER_STRINGS = {44: "unk_surface", 46: "bos_piece", 47: "eos_piece", 48: "pad_piece"}


def _parse_trainer(buf: bytes) -> Trainer:
  what, kw = "trainer_spec", {}
  for field, wire, value in _fields(buf, what):
    if field in _TRAINER_INTS:
      _expect(field, wire, 0, what)
      kw[_TRAINER_INTS[field]] = _signed32(value)
    elif field in _TRAINER_BOOLS:
      _expect(field, wire, 0, what)
      kw[_TRAINER_BOOLS[field]] = bool(value)
    elif field in _TRAINER_STRINGS:
      _expect(field, wire, 2, what)
      kw[_TRAINER_STRINGS[field]] = _text(value, f"{what}.{_TRAINER_STRINGS[field]}")
  return Trainer(**kw)


def parse_model(data: bytes) -> ModelProto:
  """A serialized `ModelProto` -> ModelProto. Raises ValueError for anything that is not one
  (malformed wire format, no pieces, a field of the wrong type)."""
  if not isinstance(data, (bytes, bytearray, memoryview)):
    raise TypeError(f"data must be bytes, got {type(data).__name__}")
  data = bytes(data)
  pieces, trainer, normalizer, denorm = [], Trainer(), Normalizer(), False
  for field, wire, value in _fields(data, "ModelProto"):
    if field == 1:
      _expect(field, wire, 2, "ModelProto")
      pieces.append(_parse_piece(value, len(pieces)))
    elif field == 2:
      _expect(field, wire, 2, "ModelProto")
      trainer = _parse_trainer(value)
    elif field == 3:
      _expect(field, wire, 2, "ModelProto")
      normalizer = _parse_normalizer(value)
    elif field == 5:
      _expect(field, wire, 2, "ModelProto")
      denorm = bool(_parse_normalizer(value).precompiled_charsmap)
  if not pieces:
    raise ValueError("not a SentencePiece model: no pieces (ModelProto field 1) found")
  return ModelProto(tuple(pieces), trainer, normalizer, denorm)


# ---------------------------------------------------------------- precompiled charsmap


class CharsMap:
  """The precompiled charsmap: a darts-clone double-array trie over UTF-8 keys whose values are
  offsets of NUL-terminated rewrites in a string blob.

  A trie unit (uint32) holds: has_leaf = bit 8, value = low 31 bits (on a leaf unit), label = bits
  0-7 plus bit 31 (a leaf's label has bit 31 set, so it never equals a byte), offset = (unit >> 10)
  << ((unit & 512) >> 6) (darts.h `DoubleArrayUnit`).
  """

  def __init__(self, blob: bytes):
    if len(blob) <= 4:
      raise ValueError(f"precompiled_charsmap of {len(blob)} bytes is too short for its header")
    size = struct.unpack("<I", blob[:4])[0]
    if size >= len(blob) or size % 4:
      raise ValueError(f"precompiled_charsmap: trie size {size} must be a multiple of 4 below the "
                       f"blob size {len(blob)}")
    self.units = np.frombuffer(blob[4:4 + size], "<u4").tolist()
    self.strings = blob[4 + size:]

  def _unit(self, pos: int) -> int:
    if pos >= len(self.units):
      raise ValueError(f"precompiled_charsmap: trie node {pos} lies outside the {len(self.units)} "
                       "units (broken trie)")
    return self.units[pos]

  def longest(self, data: bytes, start: int) -> tuple[bytes, int] | None:
    """(rewrite, bytes consumed) of the longest key that prefixes data[start:], or None
    (darts `commonPrefixSearch`, keeping the longest result)."""
    best = None
    unit = self._unit(0)
    pos = (unit >> 10) << ((unit & 512) >> 6)
    for i in range(start, len(data)):
      pos ^= data[i]
      unit = self._unit(pos)
      if unit & 0x800000FF != data[i]:
        break
      pos ^= (unit >> 10) << ((unit & 512) >> 6)
      if (unit >> 8) & 1:
        best = (self._unit(pos) & 0x7FFFFFFF, i + 1 - start)
    if best is None:
      return None
    offset, length = best
    end = self.strings.find(b"\0", offset)
    if offset > len(self.strings) or end < 0:
      raise ValueError(f"precompiled_charsmap: rewrite offset {offset} has no NUL-terminated string")
    return self.strings[offset:end], length


def _char_len(data: bytes, pos: int) -> int:
  """Bytes of the UTF-8 character at data[pos] (1 for a stray byte), cut to what is left."""
  b = data[pos]
  n = 1 if b < 0x80 else 2 if b >> 5 == 6 else 3 if b >> 4 == 14 else 4 if b >> 3 == 30 else 1
  return min(n, len(data) - pos)


# ---------------------------------------------------------------- the processor


class SentencePiece:
  """A unigram SentencePiece model: normalise, encode (Viterbi), decode (module docstring).

  Attributes:
    proto: the parsed ModelProto.
    vocab_size: number of pieces (ids are 0 .. vocab_size - 1).
    unk_id: the unknown piece's id; eos_id, pad_id, bos_id: the ids of the trainer spec's
      eos / pad / bos pieces ("</s>", "<pad>", "<s>") when they are control pieces, else -1 (as
      the C++ `eos_id()` etc.).
  """

  def __init__(self, proto: ModelProto, *, source: str = "model"):
    t = proto.trainer
    for flag, on in (("model_type != UNIGRAM", t.model_type != UNIGRAM),
                     ("byte_fallback", t.byte_fallback),
                     ("treat_whitespace_as_suffix", t.treat_whitespace_as_suffix),
                     ("a denormalizer_spec charsmap", proto.has_denormalizer)):
      if on:
        raise ValueError(f"{source}: SentencePiece models with {flag} are not supported (only "
                         f"unigram models like T5's spiece.model), got model_type {t.model_type}")
    self.proto, self.source = proto, source
    self.vocab_size = len(proto.pieces)
    self._pieces: dict[bytes, int] = {}
    self._reserved: dict[str, int] = {}
    user, unk = [], [i for i, p in enumerate(proto.pieces) if p[2] == UNKNOWN]
    for i, (piece, _, kind) in enumerate(proto.pieces):
      table = self._pieces if kind in (NORMAL, USER_DEFINED, UNUSED) else self._reserved
      key = piece.encode() if table is self._pieces else piece
      if key in table:
        raise ValueError(f"{source}: piece {piece!r} (id {i}) is defined twice")
      table[key] = i
      if kind == USER_DEFINED:
        user.append(piece.encode())
    if len(unk) != 1:
      raise ValueError(f"{source}: a model needs exactly one unknown piece, found ids {unk}")
    self.unk_id = unk[0]
    for name in ("eos", "pad", "bos"):  # the id of the named piece when it is a control piece
      i = self._reserved.get(getattr(t, f"{name}_piece"), -1)
      setattr(self, f"{name}_id", i if i >= 0 and proto.pieces[i][2] == CONTROL else -1)
    normal = [s for _, s, k in proto.pieces if k == NORMAL]
    self.min_score = min(normal, default=np.finfo(np.float32).max)
    self.max_score = max([FLT_MIN] + normal)  # FLT_MIN start: as the C++ (its max_score_)
    self.unk_score = _f32(self.min_score - UNK_PENALTY)
    self._max_len = max(len(k) for k in self._pieces) if self._pieces else 0
    self._user = frozenset(user)
    self._user_len = max((len(u) for u in user), default=0)
    spec = proto.normalizer
    self._charsmap = CharsMap(spec.precompiled_charsmap) if spec.precompiled_charsmap else None

  @classmethod
  def from_bytes(cls, data: bytes, *, source: str = "model") -> "SentencePiece":
    return cls(parse_model(data), source=source)

  @classmethod
  def from_file(cls, path: str | os.PathLike) -> "SentencePiece":
    """Reads a `.model` file; a missing or malformed file raises ValueError naming it."""
    path = os.fspath(path)
    if not os.path.isfile(path):
      raise ValueError(f"SentencePiece model {path!r} is not a file (e.g. T5's spiece.model)")
    with open(path, "rb") as f:
      data = f.read()
    try:
      return cls.from_bytes(data, source=path)
    except ValueError as err:
      raise ValueError(f"{path!r} is not a readable SentencePiece model: {err}") from None

  def __len__(self) -> int:
    return self.vocab_size

  def id_to_piece(self, i: int) -> str:
    if not 0 <= int(i) < self.vocab_size:
      raise ValueError(f"id must lie in [0, {self.vocab_size}), got {i}")
    return self.proto.pieces[int(i)][0]

  # -- normalisation

  def _prefix(self, data: bytes, pos: int) -> tuple[bytes, int]:
    """(normalised text, bytes consumed) at data[pos] (normalizer.cc `NormalizePrefix`)."""
    if self._user:  # user-defined pieces pass through unnormalised, longest first
      for n in range(min(self._user_len, len(data) - pos), 0, -1):
        if data[pos:pos + n] in self._user:
          return data[pos:pos + n], n
    if self._charsmap is not None:
      hit = self._charsmap.longest(data, pos)
      if hit is not None:
        return hit
    n = _char_len(data, pos)
    try:
      data[pos:pos + n].decode("utf-8")
    except UnicodeDecodeError:  # malformed UTF-8 (a lone surrogate): U+FFFD for one byte, as the C++
      return "\ufffd".encode(), 1
    return data[pos:pos + n], n

  def normalize_bytes(self, text: str | bytes) -> bytes:
    """The UTF-8 normalised text the encoder segments (module docstring; spaces as "▁" when
    escape_whitespaces)."""
    if isinstance(text, (bytes, bytearray)):  # raw UTF-8, possibly malformed (as the library takes)
      data = bytes(text)
    elif isinstance(text, str):
      data = text.encode("utf-8", "surrogatepass")
    else:
      raise TypeError(f"text must be a str or UTF-8 bytes, got {type(text).__name__}")
    spec = self.proto.normalizer
    pos, n = 0, len(data)
    if spec.remove_extra_whitespaces:  # leading spaces (after normalisation) are dropped
      while pos < n:
        piece, used = self._prefix(data, pos)
        if piece != b" ":
          break
        pos += used
    if pos == n:
      return b""
    space = SPACE.encode() if spec.escape_whitespaces else b" "
    out = bytearray(space if spec.add_dummy_prefix else b"")
    prev_space = spec.remove_extra_whitespaces
    while pos < n:
      piece, used = self._prefix(data, pos)
      if prev_space:
        piece = piece.lstrip(b" ")
      if piece:
        out += piece.replace(b" ", space) if spec.escape_whitespaces else piece
        prev_space = piece.endswith(b" ")
      pos += used
      if not spec.remove_extra_whitespaces:
        prev_space = False
    if spec.remove_extra_whitespaces:
      while out.endswith(space):
        del out[-len(space):]
    return bytes(out)

  def normalize(self, text: str) -> str:
    """`normalize_bytes` as a str (what `sentencepiece`'s `normalize` returns)."""
    return self.normalize_bytes(text).decode("utf-8", "replace")

  # -- encoding

  def _viterbi(self, data: bytes) -> list[tuple[int, int, int]]:
    """(start, end, id) of the best segmentation of normalised bytes (`EncodeOptimized`)."""
    n = len(data)
    score = [0.0] * (n + 1)
    start_at = [-1] * (n + 1)
    ids = [-1] * (n + 1)
    pieces, kinds, scores = self._pieces, self.proto.pieces, self.max_score
    start = 0
    while start < n:
      here = score[start]
      mblen = _char_len(data, start)
      single = False
      for end in range(start + 1, min(n, start + self._max_len) + 1):
        i = pieces.get(data[start:end])
        if i is None or kinds[i][2] == UNUSED:
          continue
        length = end - start
        if kinds[i][2] == USER_DEFINED:  # the C++ sums this bonus in double, stores it in float
          cand = _f32(length * scores) - 0.1 + here
        else:
          cand = _f32(kinds[i][1] + here)
        if start_at[end] == -1 or cand > score[end]:
          score[end], start_at[end], ids[end] = _f32(cand), start, i
        single = single or length == mblen
      if not single:
        end = start + mblen
        cand = _f32(self.unk_score + here)
        if start_at[end] == -1 or cand > score[end]:
          score[end], start_at[end], ids[end] = cand, start, self.unk_id
      start += mblen
    out, end = [], n
    while end > 0:
      out.append((start_at[end], end, ids[end]))
      end = start_at[end]
    return out[::-1]

  def _segments(self, text: str) -> list[tuple[bytes, int]]:
    data = self.normalize_bytes(text)
    out: list[tuple[bytes, int]] = []
    for s, e, i in self._viterbi(data):
      if i == self.unk_id and out and out[-1][1] == self.unk_id:  # runs of unknowns merge
        out[-1] = (out[-1][0] + data[s:e], i)
      else:
        out.append((data[s:e], i))
    return out

  def encode(self, text: str) -> list[int]:
    """Piece ids of `text` (no </s>; `ids` adds it)."""
    return [i for _, i in self._segments(text)]

  def encode_pieces(self, text: str) -> list[str]:
    """The pieces `encode` picks, as strings (an unknown run: its normalised characters)."""
    return [p.decode("utf-8", "replace") for p, _ in self._segments(text)]

  def ids(self, texts: Sequence[str], length: int, *, add_eos: bool = True
          ) -> tuple[np.ndarray, np.ndarray]:
    """(ids int32 [B, L], mask bool [B, L]) as T5 reads text: each text's pieces then </s> (the
    eos id) when add_eos, cut to L keeping </s> last, padded with the pad id (0 when the model
    has none); mask True on the text's ids and </s>."""
    if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 1 + add_eos:
      raise ValueError(f"length must be an int >= {1 + add_eos}, got {length!r}")
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
      raise TypeError(f"texts must be a sequence of str, got {texts!r:.80}")
    if add_eos and self.eos_id < 0:
      raise ValueError(f"{self.source}: add_eos needs an eos piece, but the model has no control "
                       f"piece {self.proto.trainer.eos_piece!r}")
    ids = np.full((len(texts), int(length)), max(self.pad_id, 0), np.int32)
    mask = np.zeros((len(texts), int(length)), bool)
    for b, text in enumerate(texts):
      row = self.encode(text)[:length - add_eos] + ([self.eos_id] if add_eos else [])
      ids[b, :len(row)], mask[b, :len(row)] = row, True
    return ids, mask

  # -- decoding

  def decode(self, ids: Sequence[int]) -> str:
    """Text of piece ids (sentencepiece_processor.cc `Decode`): control pieces vanish, the unknown
    piece reads as the unk surface (" ⁇ "), "▁" as a space, and the leading "▁" of the first
    visible piece (every leading one while the text is empty, with remove_extra_whitespaces) is
    dropped."""
    spec, text = self.proto.normalizer, []
    strip = spec.add_dummy_prefix or spec.remove_extra_whitespaces
    bos_ws, seen = True, False
    for i in ids:
      piece, _, kind = self.proto.pieces[self._checked_id(i)]
      if seen or any(text):
        bos_ws = False
      seen = False
      if kind == CONTROL:
        out = ""
      elif kind == UNKNOWN:
        out = self.proto.trainer.unk_surface
      else:
        if bos_ws and strip and piece.startswith(SPACE):
          piece = piece[len(SPACE):]
          seen = not spec.remove_extra_whitespaces
        out = piece.replace(SPACE, " ")
      text.append(out)
    return "".join(text)

  def _checked_id(self, i) -> int:
    if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= i < self.vocab_size:
      raise ValueError(f"ids must be ints in [0, {self.vocab_size}), got {i!r}")
    return int(i)


@functools.lru_cache(maxsize=8)
def _load(path: str, mtime: float, size: int) -> SentencePiece:
  del mtime, size  # part of the cache key only: a rewritten file is read again
  return SentencePiece.from_file(path)


def load(path: str | os.PathLike) -> SentencePiece:
  """`SentencePiece.from_file`, cached per (path, modification time, size)."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise ValueError(f"SentencePiece model {path!r} is not a file (e.g. T5's spiece.model)")
  st = os.stat(path)
  return _load(os.path.abspath(path), st.st_mtime, st.st_size)
