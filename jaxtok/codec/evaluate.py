"""Rate-distortion of real token files against JPEG / WebP / AVIF, and bits per token per prior.

Images larger than the tokenizer are coded as whole S x S tiles in one file (`image_codec`); the
token counts are per tile.

Every token file is made by `image_codec.encode_tokens` and measured in whole bytes (the 10-byte
header included); the image codecs' files are measured whole as well (`metrics.rate_distortion`).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from jaxtok.codec import container, freqs, image_codec
from jaxtok.metrics import rate_distortion as rd


class _Memo:
  """A prior whose tables are computed once per prefix (files of every length share prefixes)."""

  def __init__(self, prior: Any):
    self._prior, self._cache = prior, {}

  def cdf(self, prefix: np.ndarray) -> np.ndarray:
    key = np.asarray(prefix, np.int32).tobytes()
    if key not in self._cache:
      self._cache[key] = self._prior.cdf(prefix)
    return self._cache[key]

  def fingerprint(self) -> bytes:
    return self._prior.fingerprint()


def evaluate(tokenizer: Any, params: Any, prior_by_name: Mapping[str, Any], images: np.ndarray, *,
             counts: Sequence[int] | None = None, codecs: Sequence[str] = rd.CODECS) -> dict:
  """Coded sizes and quality of `images` (uint8 [N, S, S, 3]) at each token count, per prior.

  Returns {"rows": `rd.rate_distortion_table` rows with a `<prior>_bytes` column per prior,
  "bits_per_token": {prior: {"coded": payload bits / K at K tokens, "ideal": -log2 P / K}},
  "header_bytes": mean header bytes, "num_images", "counts"}.
  """
  images = np.asarray(images)
  k_max = tokenizer.max_tokens
  counts = sorted(counts or range(1, k_max + 1))
  base = image_codec.Model(tokenizer, params, None)
  h, w = images.shape[1:3]
  tokens = [image_codec.image_tokens(base, im) for im in images]        # [T, K] each
  recs = {k: [image_codec.decode_image(base, list(t[:, :k]), h, w) for t in tokens] for k in counts}
  coded, bits, header = {}, {}, []
  for name, prior in prior_by_name.items():
    memo = _Memo(prior)
    model = image_codec.Model(tokenizer, params, memo)
    mid = image_codec.model_id(model)
    coded[name] = {k: [len(image_codec.encode_tokens(model, t[:, :k], (h, w), mid=mid))
                       for t in tokens] for k in counts}
    payload_bits, ideal = [], []
    for t in tokens:
      full = image_codec.encode_tokens(model, t, (h, w), mid=mid)
      _, payload, _ = container.unpack(full, model_id=mid)
      header.append(len(full) - len(payload))
      payload_bits.append(8 * len(payload) / t.size)
      ideal.append(sum(freqs.bits(memo.cdf(row[:j]), int(v)) for row in t for j, v in enumerate(row))
                   / t.size)
    bits[name] = {"coded": float(np.mean(payload_bits)), "ideal": float(np.mean(ideal))}
  rows = rd.rate_distortion_table(list(images), recs, tokenizer.vocab_size, codecs, coded_bytes=coded,
                                  tiles=len(tokens[0]))
  return {"rows": rows, "bits_per_token": bits, "header_bytes": float(np.mean(header)),
          "num_images": int(len(images)), "counts": [int(k) for k in counts]}


def targets(result: dict, *, prior: str = "causal", baseline: str = "unigram",
            codecs: Sequence[str] = ("jpeg", "webp")) -> dict:
  """The issue's two targets: the prior's files smaller than each codec's at equal PSNR at every
  token count, and the prior's bits per token at least 20% below the baseline's (ideal code lengths)."""
  rows = result["rows"]
  beats = {c: all(r[f"{prior}_bytes"] < r[f"{c}_bytes"] for r in rows) for c in codecs}
  b = result["bits_per_token"]
  reduction = 1.0 - b[prior]["ideal"] / b[baseline]["ideal"]
  return {"beats_codecs_at_every_count": beats, "bits_reduction_vs_" + baseline: reduction,
          "prior_20pct_below_" + baseline: bool(reduction >= 0.2)}
