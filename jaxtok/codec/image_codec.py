"""Images <-> jaxtok token files: an ordered 1D tokenizer, a token prior and the arithmetic coder.

The tokenizer (One-D-Piece, FlexTok: any whose prefixes decode) gives k ordered tokens per S x S
tile; the prior turns them into bytes (`arithmetic`, `container`). An image larger than the tokenizer
is cut into whole S x S tiles, coded in one stream in token-major order (every tile's first token,
then every tile's second, ...), each token predicted from its own tile's earlier tokens. The number of
tokens is chosen per image: fixed, the fewest reaching a target PSNR, or the most fitting a byte
budget. A truncated file decodes to the image at the tokens its bytes determine
(`decompress(..., partial=True)`): with tiles, every tile at about the same count.

Images are uint8 [H, W, 3] with H and W multiples of the tokenizer's size S.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, NamedTuple, Sequence

import jax
import numpy as np

from jaxtok.codec import arithmetic, container
from jaxtok.eval.images import to_uint8

PRECISION = 30


class Model(NamedTuple):
  """A tokenizer (`jaxtok.tokenizers.api.Tokenizer`), its params and a prior (`jaxtok.codec.priors`)."""
  tokenizer: Any
  params: Any
  prior: Any


class Choice(NamedTuple):
  """What `choose_length` picked for one image: k, the file, and the PSNR of its decoded image."""
  num_tokens: int
  data: bytes
  psnr: float
  reached: bool


def model_id(model: Model) -> bytes:
  """Identifies the tokenizer weights/config and the prior (container.MODEL_ID_BYTES bytes)."""
  h = hashlib.sha256(json.dumps(model.tokenizer.config, sort_keys=True, default=str).encode())
  for leaf in jax.tree.leaves(model.params):
    h.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
  h.update(model.prior.fingerprint())
  return h.digest()[:container.MODEL_ID_BYTES]


def _check_image(model: Model, image: np.ndarray) -> np.ndarray:
  image = np.asarray(image)
  s = model.tokenizer.image_size
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"image must be uint8 [H, W, 3], got {image.dtype} {image.shape}")
  h, w = image.shape[:2]
  if h < s or w < s or h % s or w % s:
    raise ValueError(f"image must be a whole number of the tokenizer's {s}x{s} tiles (H and W "
                     f"multiples of {s}), got {h}x{w}: crop or pad it first")
  return image


def to_tiles(image: np.ndarray, size: int) -> np.ndarray:
  """uint8 [H, W, 3] -> its size x size tiles [T, size, size, 3], row-major (T = H W / size^2)."""
  h, w, c = image.shape
  t = image.reshape(h // size, size, w // size, size, c).transpose(0, 2, 1, 3, 4)
  return t.reshape(-1, size, size, c)


def from_tiles(tiles: np.ndarray, height: int, width: int) -> np.ndarray:
  """Inverse of `to_tiles`: [T, s, s, 3] -> [height, width, 3]."""
  s, c = tiles.shape[1], tiles.shape[-1]
  t = tiles.reshape(height // s, width // s, s, s, c).transpose(0, 2, 1, 3, 4)
  return t.reshape(height, width, c)


def tokenize(model: Model, images: np.ndarray) -> np.ndarray:
  """uint8 [B, S, S, 3] tiles -> all K tokens int32 [B, K] (prefixes of them are the shorter codes)."""
  out = model.tokenizer.encode(model.params, np.asarray(images, np.float32) / 255.0)
  return np.asarray(out.tokens, np.int32)


def detokenize(model: Model, tokens: np.ndarray) -> np.ndarray:
  """tokens int32 [B, k] -> uint8 [B, S, S, 3]."""
  return to_uint8(model.tokenizer.decode(model.params, np.asarray(tokens, np.int32)))


def image_tokens(model: Model, image: np.ndarray) -> np.ndarray:
  """uint8 [H, W, 3] -> all K tokens of each tile, int32 [T, K]."""
  image = _check_image(model, image)
  return tokenize(model, to_tiles(image, model.tokenizer.image_size))


def decode_image(model: Model, per_tile: Sequence[np.ndarray], height: int, width: int) -> np.ndarray:
  """Tokens of each tile (any count >= 1 each) -> uint8 [height, width, 3]."""
  s = model.tokenizer.image_size
  tiles = np.zeros((len(per_tile), s, s, 3), np.uint8)
  for n in sorted({len(t) for t in per_tile}):
    idx = [i for i, t in enumerate(per_tile) if len(t) == n]
    tiles[idx] = detokenize(model, np.stack([per_tile[i] for i in idx]))
  return from_tiles(tiles, height, width)


def _interleaved(prior: Any, num_tiles: int):
  """The coder's model over tiles' tokens in token-major order: position j is token j // T of tile
  j % T, predicted from that tile's earlier tokens only (prefix[t::T])."""
  return lambda prefix: prior.cdf(prefix[len(prefix) % num_tiles::num_tiles])


def encode_tokens(model: Model, tokens: np.ndarray, image_hw: tuple[int, int], *,
                  mid: bytes | None = None) -> bytes:
  """Tokens int [T, k] (k per tile; [k] for one tile) -> a token file.

  Token-major order (every tile's first token, then every tile's second, ...), so any byte prefix
  decodes all tiles at about the same token count.
  """
  tokens = np.asarray(tokens).reshape(-1, np.shape(tokens)[-1])
  seq = tokens.T.reshape(-1)
  payload, _ = arithmetic.encode(seq, _interleaved(model.prior, len(tokens)), precision=PRECISION)
  header = container.Header(mid or model_id(model), int(image_hw[0]), int(image_hw[1]),
                            tokens.shape[1], len(payload))
  return container.pack(header, payload)


def decode_tokens(model: Model, data: bytes, *, partial: bool = False,
                  mid: bytes | None = None) -> tuple[list[np.ndarray], container.Header]:
  """A token file -> (each tile's tokens int32 [k_t], header); k_t < k only for a truncated file
  read with partial=True."""
  header, payload, complete = container.unpack(data, model_id=mid or model_id(model),
                                               partial=partial)
  s = model.tokenizer.image_size
  if header.height % s or header.width % s or not header.height or not header.width:
    raise ValueError(f"the file holds a {header.height}x{header.width} image, which is not made of "
                     f"this tokenizer's {s}x{s} tiles")
  t = (header.height // s) * (header.width // s)
  seq = arithmetic.decode(payload, _interleaved(model.prior, t), t * header.num_tokens,
                          precision=PRECISION, partial=not complete)
  return [seq[i::t] for i in range(t)], header


def compress(model: Model, image: np.ndarray, *, num_tokens: int | None = None) -> bytes:
  """uint8 [H, W, 3] (whole S x S tiles) -> a token file of each tile's first num_tokens tokens
  (default all K)."""
  k = model.tokenizer.max_tokens if num_tokens is None else num_tokens
  if not isinstance(k, (int, np.integer)) or not 1 <= k <= model.tokenizer.max_tokens:
    raise ValueError(f"num_tokens must be an int in [1, {model.tokenizer.max_tokens}], got {k!r}")
  return encode_tokens(model, image_tokens(model, image)[:, :k], np.shape(image)[:2])


def decompress(model: Model, data: bytes, *, partial: bool = False) -> tuple[np.ndarray, int]:
  """A token file -> (uint8 [H, W, 3], tokens decoded over all tiles).

  partial=True accepts a truncated file and decodes the tokens its bytes determine (ValueError when
  they do not give every tile at least one token).
  """
  per_tile, header = decode_tokens(model, data, partial=partial, mid=model_id(model))
  if min(len(t) for t in per_tile) == 0:
    raise ValueError(f"the {len(data)} bytes given determine no token yet for some tile (the file "
                     f"holds {header.num_tokens} tokens per tile in {header.payload_bytes} payload "
                     f"bytes)")
  return decode_image(model, per_tile, header.height, header.width), sum(len(t) for t in per_tile)


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """PSNR in dB per image of uint8 [..., H, W, 3] pairs (inf when identical)."""
  mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2, axis=(-3, -2, -1))
  with np.errstate(divide="ignore"):
    return 10 * np.log10(255.0**2 / mse)


def reconstructions(model: Model, images: np.ndarray, counts: Sequence[int]) -> dict[int, np.ndarray]:
  """{k: uint8 [B, H, W, 3] decoded from each tile's first k tokens} for each k in counts."""
  tokens = [image_tokens(model, im) for im in images]
  h, w = np.shape(images)[1:3]
  return {int(k): np.stack([decode_image(model, list(t[:, :k]), h, w) for t in tokens])
          for k in counts}


def choose_length(model: Model, images: np.ndarray, *, target_psnr: float | None = None,
                  max_bytes: int | None = None, counts: Sequence[int] | None = None) -> list[Choice]:
  """Per image, the token count to keep (the same for each of its tiles), and its file.

  target_psnr: the fewest tokens whose decoded image reaches it (all of `counts` if none does:
  reached=False). max_bytes: the most tokens whose whole file fits (the fewest if none does:
  reached=False). Exactly one of them. counts: candidate token counts (default 1..K).
  """
  if (target_psnr is None) == (max_bytes is None):
    raise ValueError("give exactly one of target_psnr and max_bytes")
  counts = sorted(counts or range(1, model.tokenizer.max_tokens + 1))
  mid = model_id(model)
  out = []
  for image in images:
    tokens = image_tokens(model, image)
    h, w = image.shape[:2]
    quality = {k: float(psnr(image, decode_image(model, list(tokens[:, :k]), h, w))) for k in counts}
    file = lambda k: encode_tokens(model, tokens[:, :k], (h, w), mid=mid)  # pylint: disable=cell-var-from-loop
    if target_psnr is not None:
      hits = [k for k in counts if quality[k] >= target_psnr]
      k, reached = (hits[0], True) if hits else (counts[-1], False)
      data = file(k)
    else:
      files = {k: file(k) for k in counts}
      fits = [k for k in counts if len(files[k]) <= max_bytes]
      k, reached = (fits[-1], True) if fits else (counts[0], False)
      data = files[k]
    out.append(Choice(k, data, quality[k], reached))
  return out
