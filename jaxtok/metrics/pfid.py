"""pFID (RobusTok, Qiu et al. 2025): FID of images decoded from perturbed tokens against real images.

rFID measures a tokenizer's decoder on the tokens its own encoder produced; a generator never
produces exactly those tokens. pFID decodes tokens that were perturbed the way RobusTok perturbs
them in training (`jaxtok.quantizers.perturb`) and measures how far the decoded images drift from
the real ones, so it scores the decoder's robustness to the token errors of a generator.

The perturbation, stated in every result (`Perturbation`):
  fraction  the first floor(B * fraction) images of each batch are perturbed (RobusTok's beta);
  p         each token of a perturbed image is selected with probability p (alpha);
  k         a selected token takes one of the k codes nearest to its own code, drawn uniformly, its
            own code included (delta), so a token actually changes with probability p (k - 1) / k.
Neighbours are searched among the code vectors the token ids index (the VQ codebook, or FSQ's
implicit grid), by Euclidean distance (`cosine=True`: cosine, for l2-normalised codebooks).

Streaming: real, reconstructed and perturbed features are accumulated batch by batch into
`jaxtok.metrics.fid.FeatureStats` (float64), so any number of images fits in memory. Any feature
function works: the FID Inception (`jaxtok.metrics.inception.features` with user-supplied
weights) for reportable numbers, a small deterministic function in tests. Decoded images are
rounded to 8 bits before their features are taken (what a saved PNG would hold), as rFID
evaluations of the reference tokenizers do.

Dimension names: B batch, K tokens, D code dimension, C codebook size, F feature dimension.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from jaxtok.metrics import fid as fid_lib
from jaxtok.quantizers import perturb as perturb_lib


@dataclasses.dataclass(frozen=True)
class Perturbation:
  """The token perturbation of a pFID (see the module docstring)."""
  p: float = 0.1
  k: int = 5
  fraction: float = 1.0

  def __post_init__(self):
    if not 0.0 <= float(self.p) <= 1.0:
      raise ValueError(f"perturbation p must lie in [0, 1], got {self.p}")
    if isinstance(self.k, bool) or not isinstance(self.k, (int, np.integer)) or self.k < 1:
      raise ValueError(f"perturbation k must be an int >= 1, got {self.k!r}")
    if not 0.0 <= float(self.fraction) <= 1.0:
      raise ValueError(f"perturbation fraction must lie in [0, 1], got {self.fraction}")

  def as_dict(self) -> dict:
    return {"p": float(self.p), "k": int(self.k), "fraction": float(self.fraction)}

  def describe(self) -> str:
    return (f"first floor(B*{self.fraction:g}) images of each batch; each token with probability "
            f"{self.p:g} takes one of its {self.k} nearest codes (itself included)")


def perturb_tokens(rng: jax.Array, tokens: jax.Array, codebook: jax.Array, perturbation: Perturbation,
                   *, cosine: bool = False) -> tuple[jax.Array, jax.Array]:
  """(perturbed tokens int32 [B, K], fraction of tokens changed float32 []) of tokens int [B, K].

  codebook: [C, D] code vectors indexed by the tokens.
  """
  tokens = jnp.asarray(tokens)
  codebook = jnp.asarray(codebook, jnp.float32)
  if codebook.ndim != 2:
    raise ValueError(f"codebook must be [C, D], got shape {tuple(codebook.shape)}")
  if perturbation.k > codebook.shape[0]:
    raise ValueError(f"perturbation k must be <= the codebook size {codebook.shape[0]}, "
                     f"got {perturbation.k}")
  codes = codebook[tokens.astype(jnp.int32)]
  _, new, info = perturb_lib.perturb(codes, codes, tokens, codebook, rng, alpha=float(perturbation.p),
                                     beta=float(perturbation.fraction), delta=int(perturbation.k),
                                     cosine=bool(cosine))
  return new, info["change_rate"]


def quantize_8bit(images: jax.Array) -> jax.Array:
  """round(clip(x, 0, 1) * 255) / 255 in float32: the values a saved 8-bit image holds."""
  return jnp.round(jnp.clip(jnp.asarray(images, jnp.float32), 0.0, 1.0) * 255.0) / 255.0


def pfid(batches: Iterable[Any], *, encode: Callable[[jax.Array], jax.Array],
         decode: Callable[[jax.Array], jax.Array], features: Callable[[jax.Array], jax.Array],
         codebook: jax.Array, perturbation: Perturbation, rng: jax.Array,
         reference: fid_lib.FeatureStats | None = None, cosine: bool = False) -> dict:
  """pFID and rFID of a tokenizer over `batches` of real images float [B, H, W, 3] in [0, 1].

  Args:
    encode: images -> tokens int [B, K].
    decode: tokens int [B, K] -> images float [B, H, W, 3] (nominally [0, 1]).
    features: images float [B, H, W, 3] in [0, 1] -> features [B, F].
    codebook: [C, D] code vectors of the token ids (`perturb_tokens`).
    perturbation: what is done to the tokens (reported in the result).
    rng: key; batch i uses fold_in(rng, i).
    reference: features of the real images when precomputed elsewhere (then the batches'
      own real features are not accumulated).

  Returns:
    {"pfid", "rfid", "num_images", "changed_token_rate", "perturbation": {p, k, fraction},
     "perturbation_description"}. With p = 0 (or k = 1, or fraction 0) pfid equals rfid.
  """
  real = reference
  recon = perturbed = None
  changed, total, n = 0.0, 0, 0
  for i, images in enumerate(batches):
    images = jnp.asarray(images, jnp.float32)
    tokens = encode(images)
    new, rate = perturb_tokens(jax.random.fold_in(rng, i), tokens, codebook, perturbation,
                               cosine=cosine)
    f_rec = np.asarray(features(quantize_8bit(decode(tokens))), np.float64)
    f_per = np.asarray(features(quantize_8bit(decode(new))), np.float64)
    if recon is None:
      recon, perturbed = fid_lib.FeatureStats(f_rec.shape[1]), fid_lib.FeatureStats(f_rec.shape[1])
    recon.update(f_rec)
    perturbed.update(f_per)
    if reference is None:
      f_real = np.asarray(features(images), np.float64)
      real = real or fid_lib.FeatureStats(f_real.shape[1])
      real.update(f_real)
    changed += float(rate) * tokens.size
    total += int(tokens.size)
    n += int(images.shape[0])
  if recon is None or n < 2:
    raise ValueError(f"pFID needs at least 2 images, got {n}")
  return {"pfid": fid_lib.fid_from_stats(perturbed, real), "rfid": fid_lib.fid_from_stats(recon, real),
          "num_images": n, "changed_token_rate": changed / max(total, 1),
          "perturbation": perturbation.as_dict(),
          "perturbation_description": perturbation.describe()}
