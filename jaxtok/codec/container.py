"""The jaxtok token file: a 10-byte header (for small images) and the arithmetic-coded payload.

Layout (varint = unsigned LEB128, 1 byte below 128):
  b"J"              magic
  version           1 byte (VERSION)
  model id          2 bytes: the first bytes of sha256(tokenizer fingerprint + prior fingerprint)
  height, width     varints: the image size the tokens decode to
  num_tokens        varint: k, the tokens coded
  payload length    varint: bytes of payload (trailing zero bytes of the coder's output are dropped)
  crc               2 bytes: CRC-CCITT (binascii.crc_hqx) of everything above and the payload
  payload

Every byte of the header is counted in the rate-distortion tables. A file is checked on read: magic
and version, the model id against the model doing the decoding, a payload shorter than declared
(truncated; decodable progressively with `partial=True`, without the CRC check that needs the whole
file), and the CRC (corrupted).
"""
from __future__ import annotations

import binascii
from typing import NamedTuple

MAGIC, VERSION = b"J", 1
MODEL_ID_BYTES = 2


class Header(NamedTuple):
  model_id: bytes
  height: int
  width: int
  num_tokens: int
  payload_bytes: int


def _varint(n: int) -> bytes:
  if n < 0:
    raise ValueError(f"varint fields must be >= 0, got {n}")
  out = bytearray()
  while True:
    byte, n = n & 0x7F, n >> 7
    out.append(byte | (0x80 if n else 0))
    if not n:
      return bytes(out)


def _read_varint(data: bytes, pos: int, field: str) -> tuple[int, int]:
  value = shift = 0
  while True:
    if pos >= len(data) or shift > 63:
      raise ValueError(f"token file header is cut or malformed (reading {field})")
    byte = data[pos]
    value |= (byte & 0x7F) << shift
    pos, shift = pos + 1, shift + 7
    if not byte & 0x80:
      return value, pos


def pack(header: Header, payload: bytes) -> bytes:
  """Header + payload -> file bytes."""
  if len(header.model_id) != MODEL_ID_BYTES:
    raise ValueError(f"model_id must be {MODEL_ID_BYTES} bytes, got {len(header.model_id)}")
  if header.payload_bytes != len(payload):
    raise ValueError(f"header.payload_bytes={header.payload_bytes} but the payload has {len(payload)}")
  head = (MAGIC + bytes([VERSION]) + header.model_id + _varint(header.height)
          + _varint(header.width) + _varint(header.num_tokens) + _varint(len(payload)))
  crc = binascii.crc_hqx(head + payload, 0)
  return head + crc.to_bytes(2, "big") + payload


def unpack(data: bytes, *, model_id: bytes, partial: bool = False) -> tuple[Header, bytes, bool]:
  """File bytes -> (header, payload, complete).

  Raises ValueError on a foreign file, another model's file, a truncated file (unless partial), or a
  CRC mismatch. With partial=True a short payload is returned as is (complete=False).
  """
  if not isinstance(data, (bytes, bytearray)):
    raise TypeError(f"data must be bytes, got {type(data).__name__}")
  data = bytes(data)
  if data[:1] != MAGIC:
    raise ValueError("not a jaxtok token file (bad magic byte)")
  if len(data) < 2 or data[1] != VERSION:
    raise ValueError(f"unsupported token file version {data[1] if len(data) > 1 else None} "
                     f"(this jaxtok reads version {VERSION})")
  pos = 2 + MODEL_ID_BYTES
  if len(data) < pos:
    raise ValueError("token file header is cut (model id)")
  file_id = data[2:pos]
  fields = []
  for field in ("height", "width", "num_tokens", "payload length"):
    value, pos = _read_varint(data, pos, field)
    fields.append(value)
  header = Header(file_id, *fields)
  if file_id != model_id:
    raise ValueError(f"the file was coded with model {file_id.hex()}, this tokenizer + prior is "
                     f"{model_id.hex()}: decode it with the tokenizer checkpoint and prior it was "
                     f"made with")
  if len(data) < pos + 2:
    raise ValueError("token file header is cut (crc)")
  crc, payload = int.from_bytes(data[pos:pos + 2], "big"), data[pos + 2:]
  if len(payload) > header.payload_bytes:
    raise ValueError(f"token file has {len(payload) - header.payload_bytes} bytes after its payload")
  if len(payload) < header.payload_bytes:
    if partial:
      return header, payload, False
    raise ValueError(f"token file is truncated: payload has {len(payload)} of "
                     f"{header.payload_bytes} bytes (decode a prefix with partial=True / --partial)")
  if binascii.crc_hqx(data[:pos] + payload, 0) != crc:
    raise ValueError("token file is corrupted: CRC mismatch")
  return header, payload, True
