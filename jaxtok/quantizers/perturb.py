"""RobusTok latent perturbation: train a decoder on slightly wrong tokens (Qiu et al. 2025).

During tokenizer training the quantized latents of some images are perturbed before decoding, so the
decoder learns to tolerate the token errors a generator will make (RobusTok / ImageFolder
`tokenizer/tokenizer_image/latent_perturbation.py add_perturbation`):

  * only the first floor(B * beta) images of the batch are perturbed (`image_mask`; the release
    computes int(B * beta) in Python floats, as here); the others keep z_q and their indices exactly;
  * in those images each token is selected with probability alpha, and a selected token takes one of
    its delta nearest codes (to the encoder output z), drawn uniformly, the nearest itself included
    (`sample_choices`). The nearest is the token's own code when the indices came from nearest-code VQ
    with the same metric, so a token CHANGES with probability alpha (delta - 1) / delta, and delta = 1
    changes nothing. (The release draws r ~ U[0, 1) and keeps the nearest when r > alpha; here a token
    is selected when u < alpha: the same probability alpha.)
  * a selected token's code is straight-through to z: codebook[pick] in value, identity gradient to z
    (the release: z + sg(e - z)). Unselected tokens keep z_q (the release recomputes the nearest code,
    which is the same code for nearest-code VQ).
  * cosine=True is the release's `codebook_norm`: neighbours by cosine distance, the replacement code is
    the l2-normalised codebook row, and the straight-through target is the l2-normalised z.

The release applies this after the quantizer's losses are computed, so only the reconstruction,
perceptual and GAN losses see perturbed tokens; do the same (perturb `QuantizerOutput.codes` after
reading `losses`).

Schedule (`schedule`): the release (`xqgan_train.py get_random_ratio`, per epoch) uses ratio 1 before
`anneal_start`, `1 - (e - start) / (end - start) * end_ratio` in between and `end_ratio` after
`anneal_end`, with alpha = ratio * alpha0 and delta = int(ratio * delta0). That is continuous at
`anneal_end` only when end_ratio = 0.5 (the default). Here the ratio falls linearly from 1 at
`anneal_start` to `end_ratio` at `anneal_end` for every end_ratio (identical to the release for 0.5);
delta is floored and kept >= 1 (the release would draw from an empty range at delta 0).

Static shapes: delta sets how many neighbours are searched, so it must be static for the search. A
scheduled delta is traced; pass `max_delta` = delta0 (static): the `max_delta` nearest codes are found
and j is drawn uniformly from [0, delta) with the traced delta, so one compiled step serves the whole
schedule and gives the same result as a static delta.

Dimension names: B batch (images), T tokens per image (any number of axes), D code dimension,
K codebook size, k = delta (or max_delta) neighbours searched.
"""
from __future__ import annotations

import math
import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxtok.quantizers import base
from jaxtok.quantizers import search

sg = jax.lax.stop_gradient

# Relative slack before flooring ratio * delta0 in float32, so that e.g. 0.7 * 10 (6.9999995 in
# float32) gives 7 as in the release's float64 int().
_FLOOR_SLACK = 1e-6


def _is_traced(value: Any) -> bool:
  return isinstance(value, jax.Array) or hasattr(value, "aval")


def _check_real(name: str, value: Any, *, minimum: float | None = None,
                maximum: float | None = None, allow_traced: bool = True) -> None:
  if allow_traced and _is_traced(value):
    return
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    raise TypeError(f"{name} must be a real number, got {type(value).__name__} ({value!r})")
  if not math.isfinite(value):
    raise ValueError(f"{name} must be finite, got {value}")
  if minimum is not None and value < minimum:
    raise ValueError(f"{name} must be >= {minimum}, got {value}")
  if maximum is not None and value > maximum:
    raise ValueError(f"{name} must be <= {maximum}, got {value}")


# ----------------------------------------------------------------------------------------------------
# Pure pieces.


def num_perturbed(batch: int, beta: float) -> int:
  """floor(B * beta) images are perturbed, computed as the release does (Python float, int())."""
  batch = base.check_positive_int("batch", batch)
  _check_real("beta", beta, minimum=0.0, maximum=1.0, allow_traced=False)
  return int(batch * beta)


def image_mask(batch: int, beta: float) -> np.ndarray:
  """[B] bool, True for the first floor(B * beta) images (the perturbed ones). Static."""
  return np.arange(batch) < num_perturbed(batch, beta)


def sample_choices(rng: jax.Array, shape: tuple[int, ...], *, alpha: float | jax.Array,
                   delta: int | jax.Array) -> tuple[jax.Array, jax.Array]:
  """Which tokens are perturbed and which neighbour they take.

  Args:
    rng: PRNG key.
    shape: token shape, e.g. (B, T).
    alpha: selection probability in [0, 1] (may be traced).
    delta: neighbours to choose from, >= 1 (may be traced; a traced value is used as given).

  Returns:
    selected: bool [shape], True with probability alpha (u < alpha, u ~ U[0, 1)).
    choice: int32 [shape], uniform in [0, delta): the rank of the neighbour a selected token takes
      (0 = the nearest code).
  """
  key_u, key_j = jax.random.split(rng)
  selected = jax.random.uniform(key_u, shape, jnp.float32) < alpha
  choice = jax.random.randint(key_j, shape, 0, delta, dtype=jnp.int32)
  return selected, choice


def schedule(step: int | jax.Array, *, alpha0: float, delta0: int, anneal_start: float,
             anneal_end: float, end_ratio: float = 0.5) -> tuple[jax.Array, jax.Array]:
  """RobusTok's annealed perturbation strength (continuous linear form; see the module docstring).

  ratio = 1 for step <= anneal_start, end_ratio for step >= anneal_end, linear in between.

  Args:
    step: the schedule's clock (the release counts epochs), int or traced scalar.
    alpha0: selection probability before annealing, in [0, 1].
    delta0: neighbours before annealing, >= 1 (pass it as `max_delta` to `perturb`).
    anneal_start, anneal_end: anneal_start < anneal_end.
    end_ratio: final ratio in [0, 1] (release default 0.5).

  Returns:
    alpha: float32 scalar ratio * alpha0.
    delta: int32 scalar max(1, floor(ratio * delta0)), in [1, delta0].
  """
  _check_real("alpha0", alpha0, minimum=0.0, maximum=1.0, allow_traced=False)
  delta0 = base.check_positive_int("delta0", delta0)
  _check_real("anneal_start", anneal_start, allow_traced=False)
  _check_real("anneal_end", anneal_end, allow_traced=False)
  if not anneal_end > anneal_start:
    raise ValueError(f"anneal_end must be > anneal_start={anneal_start}, got {anneal_end}")
  _check_real("end_ratio", end_ratio, minimum=0.0, maximum=1.0, allow_traced=False)
  _check_real("step", step)
  frac = jnp.clip((jnp.asarray(step, jnp.float32) - anneal_start) / (anneal_end - anneal_start),
                  0.0, 1.0)
  ratio = 1.0 + (end_ratio - 1.0) * frac
  alpha = (ratio * alpha0).astype(jnp.float32)
  delta = jnp.floor(ratio * delta0 * (1.0 + _FLOOR_SLACK)).astype(jnp.int32)
  return alpha, jnp.clip(delta, 1, delta0)


# ----------------------------------------------------------------------------------------------------
# Perturbation.


def _check_inputs(z, z_q, indices, codebook) -> tuple[int, int]:
  base.check_float_array("z", z, min_rank=2)
  base.check_float_array("z_q", z_q, min_rank=2)
  if tuple(z_q.shape) != tuple(z.shape):
    raise ValueError(f"z_q must have the shape of z {tuple(z.shape)}, got {tuple(z_q.shape)}")
  base.check_int_array("indices", indices)
  if tuple(indices.shape) != tuple(z.shape[:-1]):
    raise ValueError(
        f"indices must have shape {tuple(z.shape[:-1])} (z without its last axis), got "
        f"{tuple(indices.shape)}")
  base.check_float_array("codebook", codebook, min_rank=2)
  if codebook.ndim != 2 or codebook.shape[1] != z.shape[-1]:
    raise ValueError(f"codebook must have shape [K, {z.shape[-1]}], got {tuple(codebook.shape)}")
  if z.shape[0] < 1:
    raise ValueError(f"z must hold at least one image, got shape {tuple(z.shape)}")
  return z.shape[0], codebook.shape[0]


def _num_candidates(delta: Any, max_delta: Any, k: int) -> int:
  """The static number of neighbours to search."""
  if max_delta is not None:
    max_delta = base.check_positive_int("max_delta", max_delta)
    if max_delta > k:
      raise ValueError(f"max_delta must be <= K={k} (codebook size), got {max_delta}")
    if not _is_traced(delta):
      delta = base.check_positive_int("delta", delta)
      if delta > max_delta:
        raise ValueError(f"delta must be <= max_delta={max_delta}, got {delta}")
    return max_delta
  if _is_traced(delta):
    raise ValueError("delta is traced (a schedule); pass a static max_delta (e.g. delta0) to size the "
                     "neighbour search")
  delta = base.check_positive_int("delta", delta)
  if delta > k:
    raise ValueError(f"delta must be <= K={k} (codebook size), got {delta}")
  return delta


def perturb(z: jax.Array, z_q: jax.Array, indices: jax.Array, codebook: jax.Array, rng: jax.Array, *,
            alpha: float | jax.Array, beta: float, delta: int | jax.Array,
            max_delta: int | None = None, cosine: bool = False,
            max_block_elements: int = 2**24) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
  """Replaces some tokens of the first floor(B * beta) images by one of their delta nearest codes.

  Args:
    z: [B, ..., D] floating encoder outputs (the quantizer's input).
    z_q: [B, ..., D] floating quantized latents (the quantizer's straight-through codes).
    indices: [B, ...] int code indices of z_q.
    codebook: [K, D] floating codebook.
    rng: PRNG key.
    alpha: probability that a token of a perturbed image is resampled, in [0, 1] (may be traced).
    beta: fraction of the batch perturbed, in [0, 1] (static: it sets a shape).
    delta: neighbours to draw from, 1 <= delta <= K; static int, or traced with `max_delta` given
      (a traced delta is clipped to [1, max_delta]).
    max_delta: static number of neighbours searched when delta is traced (the schedule's delta0).
    cosine: cosine neighbours and normalised codes (the release's `codebook_norm`).
    max_block_elements: memory bound of the neighbour search (`search.knn`).

  Returns:
    codes: [B, ..., D] in z_q's dtype: for selected tokens codebook[pick] (normalised when cosine) in
      value with the identity gradient to z (normalised z when cosine); z_q elsewhere.
    new_indices: [B, ...] int32, pick for selected tokens, `indices` elsewhere.
    info: dict with `selected` (bool [B, ...], tokens that drew a neighbour), `changed` (bool [B, ...],
      new_indices != indices) and `change_rate` (float32 scalar, mean of `changed` over all tokens).
  """
  batch, k = _check_inputs(z, z_q, indices, codebook)
  if rng is None:
    raise ValueError("rng must be a PRNG key, got None")
  if not isinstance(cosine, (bool, np.bool_)):
    raise TypeError(f"cosine must be a Python bool, got {type(cosine).__name__} ({cosine!r})")
  _check_real("alpha", alpha, minimum=0.0, maximum=1.0)
  num_images = num_perturbed(batch, beta)
  candidates = _num_candidates(delta, max_delta, k)
  budget = base.check_positive_int("max_block_elements", max_block_elements)
  if max_delta is not None:
    delta = jnp.clip(jnp.asarray(delta, jnp.int32), 1, max_delta)
  return _perturb(z, z_q, indices, codebook, rng, alpha, delta, num_images, candidates, bool(cosine),
                  budget)


@jax.jit(static_argnums=(7, 8, 9, 10))
def _perturb(z, z_q, indices, codebook, rng, alpha, delta, num_images, candidates, cosine, budget):
  indices = indices.astype(jnp.int32)
  if num_images == 0:
    no = jnp.zeros(indices.shape, bool)
    return z_q, indices, {"selected": no, "changed": no, "change_rate": jnp.zeros((), jnp.float32)}
  d = z.shape[-1]
  # Only the perturbed images need the neighbour search.
  zp = z[:num_images].astype(jnp.float32)
  token_shape = zp.shape[:-1]
  neighbours, _ = search.knn(zp.reshape(-1, d), codebook, candidates,
                             metric="cosine" if cosine else "euclidean", max_block_elements=budget)
  selected, choice = sample_choices(rng, token_shape, alpha=alpha, delta=delta)
  pick = jnp.take_along_axis(neighbours, choice.reshape(-1, 1), axis=-1).reshape(token_shape)
  book = codebook.astype(jnp.float32)
  if cosine:
    book = search.l2_normalize(book)
    zp = search.l2_normalize(zp)
  # e + (z - sg(z)) is exactly e in value, with the identity gradient to z.
  replaced = (book[pick] + (zp - sg(zp))).astype(z_q.dtype)
  head_codes = jnp.where(selected[..., None], replaced, z_q[:num_images])
  head_indices = jnp.where(selected, pick, indices[:num_images])
  codes = jnp.concatenate([head_codes, z_q[num_images:]], axis=0)
  new_indices = jnp.concatenate([head_indices, indices[num_images:]], axis=0)
  pad = jnp.zeros((z.shape[0] - num_images,) + token_shape[1:], bool)
  selected = jnp.concatenate([selected, pad], axis=0)
  changed = new_indices != indices
  return codes, new_indices, {"selected": selected, "changed": changed,
                              "change_rate": jnp.mean(changed.astype(jnp.float32))}


# ----------------------------------------------------------------------------------------------------
# FSQ: the implicit grid's nearby codes.


def fsq_neighbours(z: jax.Array, digits: jax.Array, levels: tuple[int, ...], *,
                   symmetric: bool = False) -> jax.Array:
  """Grid neighbours of FSQ codes, nearest first: int32 [..., 2D+1, D] digits.

  The candidates of a token are its own grid point and the 2D points one level away along a single
  axis (`digits` +- 1 in dimension i), ranked by squared distance, in level units, to the token's
  unrounded position p (`fsq.bound(z) + L//2`, or (L-1)(tanh z + 1)/2 with symmetric): with
  f = p - digits in [-1/2, 1/2], a step s = +-1 along i adds (s - f_i)^2 - f_i^2 = 1 - 2 s f_i >= 0
  to the own point's distance, so the own point ranks first (ties keep it first: the sort is stable,
  own point, then +1 / -1 along dimension 0, 1, ...). Points off the grid rank last (infinite
  distance); every point has at least D neighbours on the grid, so the first D + 1 are valid.

  Args:
    z: [..., D] floating FSQ input (the quantizer's z).
    digits: [..., D] int per-dimension level indices of z's code (`fsq.indices_to_digits`).
    levels: the D FSQ levels (static).
    symmetric: the symmetric FSQ variant.
  """
  from jaxtok.quantizers import fsq  # pylint: disable=g-import-not-at-top
  d = len(levels)
  x = z.astype(jnp.float32)
  if symmetric:
    lm1 = np.asarray([level - 1 for level in levels], np.float32)
    pos = lm1 * (jnp.tanh(x) + 1.0) * 0.5
  else:
    pos = fsq.bound(x, levels) + np.asarray([level // 2 for level in levels], np.float32)
  f = sg(pos) - digits.astype(jnp.float32)
  # Step table [2D+1, D]: row 0 the own point, then +1 and -1 along each dimension.
  steps = np.concatenate([np.zeros((1, d), np.int32),
                          np.repeat(np.eye(d, dtype=np.int32), 2, axis=0) * np.tile([[1], [-1]], (d, 1))])
  cand = digits[..., None, :].astype(jnp.int32) + steps  # [..., 2D+1, D]
  extra = jnp.concatenate([jnp.zeros(f.shape[:-1] + (1,), jnp.float32),
                           (1.0 - 2.0 * f[..., :, None] * np.asarray([1.0, -1.0], np.float32)
                            ).reshape(f.shape[:-1] + (2 * d,))], axis=-1)
  on_grid = jnp.all((cand >= 0) & (cand < np.asarray(levels, np.int32)), axis=-1)
  extra = jnp.where(on_grid, extra, jnp.inf)
  order = jnp.argsort(extra, axis=-1, stable=True)
  return jnp.take_along_axis(cand, order[..., None], axis=-2)


def perturb_fsq(z: jax.Array, z_q: jax.Array, indices: jax.Array, levels: Any, rng: jax.Array, *,
                alpha: float | jax.Array, beta: float, delta: int | jax.Array,
                max_delta: int | None = None,
                symmetric: bool = False) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
  """RobusTok perturbation of FSQ tokens: a selected token moves to a nearby point of the level grid.

  RobusTok replaces a selected token by one of its delta nearest codebook entries, drawn uniformly,
  the nearest (its own code) included. FSQ's codebook is the product grid of levels, so the nearby
  codes are grid neighbours: here the delta nearest among the token's own point and the points one
  level away along one axis (`fsq_neighbours`, distances in level units to the unrounded position).
  Selection (alpha, first floor(B * beta) images) is `perturb`'s. delta <= D + 1 (every grid point
  has at least D on-grid neighbours), so a token changes with probability alpha (delta - 1) / delta.

  A selected token's code is the neighbour's grid value (bitwise `fsq.indices_to_codes`) with FSQ's
  straight-through gradient to z unchanged (value sg(e) + z_q - sg(z_q)).

  Args:
    z: [B, ..., D] floating FSQ input.
    z_q: [B, ..., D] FSQ codes of z (straight-through).
    indices: [B, ...] int FSQ indices of z_q.
    levels: the D FSQ levels.
    rng, alpha, beta: as in `perturb`.
    delta: 1 <= delta <= D + 1; static, or traced with static `max_delta` (<= D + 1).
    max_delta: static bound of a traced delta.
    symmetric: the symmetric FSQ variant (as in `fsq.quantize`).

  Returns:
    (codes [B, ..., D] in z_q's dtype, new_indices [B, ...] int32, info) as `perturb`.
  """
  from jaxtok.quantizers import fsq  # pylint: disable=g-import-not-at-top
  levels = fsq.check_levels(levels, symmetric=symmetric)
  base.check_float_array("z", z, min_rank=2, last_dim=len(levels))
  base.check_float_array("z_q", z_q, min_rank=2)
  if tuple(z_q.shape) != tuple(z.shape):
    raise ValueError(f"z_q must have the shape of z {tuple(z.shape)}, got {tuple(z_q.shape)}")
  base.check_int_array("indices", indices)
  if tuple(indices.shape) != tuple(z.shape[:-1]):
    raise ValueError(f"indices must have shape {tuple(z.shape[:-1])}, got {tuple(indices.shape)}")
  if rng is None:
    raise ValueError("rng must be a PRNG key, got None")
  _check_real("alpha", alpha, minimum=0.0, maximum=1.0)
  limit = len(levels) + 1
  try:
    _num_candidates(delta, max_delta, limit)
  except ValueError as e:
    raise ValueError(f"{e}; an FSQ token has D + 1 = {limit} nearest grid points to draw from "
                     f"(its own and D neighbours)") from None
  if max_delta is not None:
    delta = jnp.clip(jnp.asarray(delta, jnp.int32), 1, max_delta)
  return _perturb_fsq(z, z_q, indices, rng, alpha, delta, num_perturbed(z.shape[0], beta), levels,
                      bool(symmetric))


@jax.jit(static_argnums=(6, 7, 8))
def _perturb_fsq(z, z_q, indices, rng, alpha, delta, num_images, levels, symmetric):
  from jaxtok.quantizers import fsq  # pylint: disable=g-import-not-at-top
  indices = indices.astype(jnp.int32)
  if num_images == 0:
    return z_q, indices, _info(indices, indices, jnp.zeros(indices.shape, bool))
  head = indices[:num_images]
  cand = fsq_neighbours(z[:num_images], fsq.indices_to_digits(head, levels), levels,
                        symmetric=symmetric)
  selected, choice = sample_choices(rng, head.shape, alpha=alpha, delta=delta)
  digits = jnp.take_along_axis(cand, choice[..., None, None], axis=-2)[..., 0, :]
  pick = fsq.digits_to_indices(digits, levels)
  e = fsq.indices_to_codes(pick, levels, symmetric=symmetric)
  zq = z_q[:num_images]
  replaced = (e + (zq.astype(jnp.float32) - sg(zq).astype(jnp.float32))).astype(z_q.dtype)
  codes = jnp.concatenate([jnp.where(selected[..., None], replaced, zq), z_q[num_images:]], axis=0)
  new_indices = jnp.concatenate([jnp.where(selected, pick, head), indices[num_images:]], axis=0)
  pad = jnp.zeros((z.shape[0] - num_images,) + head.shape[1:], bool)
  return codes, new_indices, _info(indices, new_indices, jnp.concatenate([selected, pad], axis=0))


def _info(indices, new_indices, selected):
  changed = new_indices != indices
  return {"selected": selected, "changed": changed,
          "change_rate": jnp.mean(changed.astype(jnp.float32))}


# ----------------------------------------------------------------------------------------------------
# What a tokenizer's train_forward calls.


def strength(settings: dict, step: int | jax.Array | None) -> tuple[Any, Any]:
  """(alpha, delta) of `settings` (alpha, beta, delta [, anneal_start, anneal_end, end_ratio]) at
  `step`: the constants, or `schedule` on the step when annealed (then step is required)."""
  if "anneal_start" not in settings:
    return settings["alpha"], settings["delta"]
  if step is None:
    raise ValueError("an annealed perturbation (anneal_start / anneal_end) needs the training step, "
                     "got step=None")
  return schedule(step, alpha0=settings["alpha"], delta0=settings["delta"],
                  anneal_start=settings["anneal_start"], anneal_end=settings["anneal_end"],
                  end_ratio=settings.get("end_ratio", 0.5))


def apply(settings: dict, step: int | jax.Array | None, rng: jax.Array, z: jax.Array, z_q: jax.Array,
          indices: jax.Array, *, codebook: jax.Array | None = None, cosine: bool = False,
          fsq_levels: Any = None, symmetric: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
  """RobusTok perturbation of a tokenizer's quantized latents, as its `train_forward` applies it.

  VQ (`codebook` given, no gradient to it through the replacement) uses `perturb`, FSQ
  (`fsq_levels` given) `perturb_fsq`; alpha and delta come from `strength(settings, step)`, the
  neighbour search is sized by settings["delta"].

  Returns:
    codes [B, ..., D] (z_q with the perturbed tokens replaced) and metrics
    {"perturb/change_rate", "perturb/alpha"} (float32 scalars).
  """
  alpha, delta = strength(settings, step)
  kw = dict(alpha=alpha, beta=settings["beta"], delta=delta, max_delta=settings["delta"])
  if (codebook is None) == (fsq_levels is None):
    raise ValueError("perturbation needs exactly one of codebook (VQ) or fsq_levels (FSQ)")
  if codebook is not None:
    codes, _, info = perturb(z, z_q, indices, sg(codebook), rng, cosine=cosine, **kw)
  else:
    codes, _, info = perturb_fsq(z, z_q, indices, fsq_levels, rng, symmetric=symmetric, **kw)
  return codes, {"perturb/change_rate": info["change_rate"],
                 "perturb/alpha": jnp.asarray(alpha, jnp.float32)}
