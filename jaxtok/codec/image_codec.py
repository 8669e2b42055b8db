"""Images <-> jaxtok token files: an ordered 1D tokenizer, a token prior and the arithmetic coder.

The tokenizer (One-D-Piece, FlexTok: any whose prefixes decode) gives k ordered tokens per image; the
prior turns them into bytes (`arithmetic`, `container`). The number of tokens is chosen per image:
fixed, the fewest reaching a target PSNR, or the most fitting a byte budget. A truncated file decodes
to the image at the tokens its bytes determine (`decompress(..., partial=True)`).

Images are uint8 [H, W, 3] at the tokenizer's size.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, NamedTuple, Sequence

import jax
import numpy as np

from jaxtok.codec import arithmetic, container

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
  size = model.tokenizer.image_size
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"image must be uint8 [H, W, 3], got {image.dtype} {image.shape}")
  if size is not None and image.shape[:2] != (size, size):
    raise ValueError(f"image must be {size}x{size} (the tokenizer's size), got "
                     f"{image.shape[0]}x{image.shape[1]}")
  return image


def tokenize(model: Model, images: np.ndarray) -> np.ndarray:
  """uint8 [B, H, W, 3] -> all K tokens int32 [B, K] (prefixes of them are the shorter codes)."""
  for im in images:
    _check_image(model, im)
  out = model.tokenizer.encode(model.params, np.asarray(images, np.float32) / 255.0)
  return np.asarray(out.tokens, np.int32)


def detokenize(model: Model, tokens: np.ndarray) -> np.ndarray:
  """tokens int32 [B, k] -> uint8 [B, H, W, 3]."""
  images = model.tokenizer.decode(model.params, np.asarray(tokens, np.int32))
  return np.asarray(np.clip(np.round(np.asarray(images) * 255.0), 0, 255), np.uint8)


def encode_tokens(model: Model, tokens: Sequence[int], image_hw: tuple[int, int], *,
                  mid: bytes | None = None) -> bytes:
  """k token ids -> a token file."""
  payload, _ = arithmetic.encode(tokens, model.prior.cdf, precision=PRECISION)
  header = container.Header(mid or model_id(model), int(image_hw[0]), int(image_hw[1]), len(tokens),
                            len(payload))
  return container.pack(header, payload)


def decode_tokens(model: Model, data: bytes, *, partial: bool = False,
                  mid: bytes | None = None) -> tuple[np.ndarray, container.Header]:
  """A token file -> (tokens int32 [k'], header); k' < k only for a truncated file with partial."""
  header, payload, complete = container.unpack(data, model_id=mid or model_id(model),
                                               partial=partial)
  tokens = arithmetic.decode(payload, model.prior.cdf, header.num_tokens, precision=PRECISION,
                             partial=not complete)
  return tokens, header


def compress(model: Model, image: np.ndarray, *, num_tokens: int | None = None) -> bytes:
  """uint8 [H, W, 3] -> a token file of its first num_tokens tokens (default all K)."""
  image = _check_image(model, image)
  k = model.tokenizer.max_tokens if num_tokens is None else num_tokens
  if not isinstance(k, (int, np.integer)) or not 1 <= k <= model.tokenizer.max_tokens:
    raise ValueError(f"num_tokens must be an int in [1, {model.tokenizer.max_tokens}], got {k!r}")
  tokens = tokenize(model, image[None])[0, :k]
  return encode_tokens(model, tokens, image.shape[:2])


def decompress(model: Model, data: bytes, *, partial: bool = False) -> tuple[np.ndarray, int]:
  """A token file -> (uint8 [H, W, 3], tokens used).

  partial=True accepts a truncated file and decodes the tokens its bytes determine (ValueError when
  they determine none).
  """
  mid = model_id(model)
  tokens, header = decode_tokens(model, data, partial=partial, mid=mid)
  if len(tokens) == 0:
    raise ValueError(f"the {len(data)} bytes given determine no token yet (the file holds "
                     f"{header.num_tokens} tokens in {header.payload_bytes} payload bytes)")
  size = model.tokenizer.image_size
  if size is not None and (header.height, header.width) != (size, size):
    raise ValueError(f"the file holds a {header.height}x{header.width} image, this tokenizer decodes "
                     f"{size}x{size}")
  return detokenize(model, tokens[None])[0], len(tokens)


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """PSNR in dB per image of uint8 [..., H, W, 3] pairs (inf when identical)."""
  mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2, axis=(-3, -2, -1))
  with np.errstate(divide="ignore"):
    return 10 * np.log10(255.0**2 / mse)


def reconstructions(model: Model, images: np.ndarray, counts: Sequence[int]) -> dict[int, np.ndarray]:
  """{k: uint8 [B, H, W, 3] decoded from the first k tokens} for each k in counts."""
  tokens = tokenize(model, images)
  return {int(k): detokenize(model, tokens[:, :k]) for k in counts}


def choose_length(model: Model, images: np.ndarray, *, target_psnr: float | None = None,
                  max_bytes: int | None = None, counts: Sequence[int] | None = None) -> list[Choice]:
  """Per image, the token count to keep, and its file.

  target_psnr: the fewest tokens whose decoded image reaches it (all of `counts` if none does:
  reached=False). max_bytes: the most tokens whose whole file fits (the fewest if none does:
  reached=False). Exactly one of them. counts: candidate token counts (default 1..K).
  """
  if (target_psnr is None) == (max_bytes is None):
    raise ValueError("give exactly one of target_psnr and max_bytes")
  images = np.asarray(images)
  counts = sorted(counts or range(1, model.tokenizer.max_tokens + 1))
  tokens = tokenize(model, images)
  recs = {k: detokenize(model, tokens[:, :k]) for k in counts}
  mid = model_id(model)
  out = []
  for i, image in enumerate(images):
    files = {}

    def file(k):
      if k not in files:
        files[k] = encode_tokens(model, tokens[i, :k], image.shape[:2], mid=mid)
      return files[k]

    quality = {k: float(psnr(image, recs[k][i])) for k in counts}
    if target_psnr is not None:
      hits = [k for k in counts if quality[k] >= target_psnr]
      k, reached = (hits[0], True) if hits else (counts[-1], False)
    else:
      fits = [k for k in counts if len(file(k)) <= max_bytes]
      k, reached = (fits[-1], True) if fits else (counts[0], False)
    out.append(Choice(k, file(k), quality[k], reached))
  return out
