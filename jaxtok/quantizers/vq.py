"""Vector quantization (VQ-VAE) with EMA codebooks, k-means init, dead-code restart, cosine codes,
the rotation trick and the MaskGIT/GigaTok entropy loss.

Dimension names: N flattened vectors, D code dimension, K codebook size, R rows per chunk,
B codes per codebook block.

Everything is a pure function of arrays. `quantize` is the forward pass; codebook updates that are not
gradients are separate functions returning a new `VQState`:

  state = init_state(rng, K, D)
  state = maybe_kmeans_init(state, z, rng)           # once, from the first batch (jit-friendly)
  out = quantize(z, state, codebook_weight=0.0)      # codes learnt by EMA: no codebook loss
  state = ema_update(state, z, out.indices)          # z: the quantizer input, gradient stopped
  state = restart_dead_codes(state, z, rng)

All math is float32 whatever the input dtype (bf16 inputs are upcast before the search, so they get the
indices of the same values in float32). With `cosine=True` z and the codebook are l2-normalised and the
codes, losses and entropy live on the unit sphere (ViT-VQGAN / GigaTok convention).
"""
from __future__ import annotations

import functools
import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxtok.quantizers import base
from jaxtok.quantizers import search

sg = jax.lax.stop_gradient


class VQState(NamedTuple):
  """Codebook state (a pytree).

  Attributes:
    codebook: [K, D] float32 codes.
    cluster_size: [K] float32 EMA of how many vectors each code received per step.
    embed_sum: [K, D] float32 EMA of the sum of the vectors each code received.
    initialized: bool scalar, True once k-means initialisation has run.
  """
  codebook: jax.Array
  cluster_size: jax.Array
  embed_sum: jax.Array
  initialized: jax.Array


# ----------------------------------------------------------------------------------------------------
# Argument checks (Python-side, before tracing work).


def _check_number(name: str, value: Any, *, minimum: float | None = None, exclusive: bool = False,
                  maximum: float | None = None) -> None:
  """Checks a static float argument; traced values (schedules) are accepted unchecked."""
  if isinstance(value, jax.Array) or hasattr(value, "aval"):
    return
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    raise TypeError(f"{name} must be a real number, got {type(value).__name__} ({value!r})")
  if minimum is not None and (value <= minimum if exclusive else value < minimum):
    raise ValueError(f"{name} must be {'>' if exclusive else '>='} {minimum}, got {value}")
  if maximum is not None and value > maximum:
    raise ValueError(f"{name} must be <= {maximum}, got {value}")


def _check_state(state: Any, *, full: bool = False) -> tuple[int, int]:
  """Validates a VQState (codebook only unless `full`); returns (K, D)."""
  if not hasattr(state, "codebook"):
    raise TypeError(f"state must be a VQState, got {type(state).__name__}")
  codebook = state.codebook
  base.check_float_array("state.codebook", codebook, min_rank=2)
  if codebook.ndim != 2:
    raise ValueError(f"state.codebook must have rank 2 (shape [K, D]), got shape {tuple(codebook.shape)}")
  k, d = codebook.shape
  if k < 2:
    raise ValueError(f"state.codebook must hold K >= 2 codes, got shape {tuple(codebook.shape)}")
  if full:
    base.check_float_array("state.cluster_size", state.cluster_size)
    if tuple(state.cluster_size.shape) != (k,):
      raise ValueError(
          f"state.cluster_size must have shape ({k},), got {tuple(state.cluster_size.shape)}")
    base.check_float_array("state.embed_sum", state.embed_sum, min_rank=2)
    if tuple(state.embed_sum.shape) != (k, d):
      raise ValueError(f"state.embed_sum must have shape ({k}, {d}), got {tuple(state.embed_sum.shape)}")
  return k, d


def _flatten(z: jax.Array, d: int, cosine: bool) -> jax.Array:
  """z [..., D] -> float32 [N, D], unit rows when cosine."""
  x = z.reshape(-1, d).astype(jnp.float32)
  return search.l2_normalize(x) if cosine else x


# ----------------------------------------------------------------------------------------------------
# State.


def init_state(rng: jax.Array, codebook_size: int, dim: int, *, scale: float = 1.0,
               cosine: bool = False) -> VQState:
  """A fresh state: codes ~ N(0, scale^2) (unit rows when cosine).

  cluster_size starts at 1 and embed_sum at the codebook, so that `ema_update` is consistent from the
  first step (an unused code decays towards itself instead of being divided by a near-zero count).

  Args:
    rng: PRNG key.
    codebook_size: K >= 2 (2**18 and more work: nothing here is quadratic in K).
    dim: D >= 1.
    scale: standard deviation of the initial codes.
    cosine: l2-normalise the initial codes.
  """
  k = base.check_positive_int("codebook_size", codebook_size, minimum=2)
  d = base.check_positive_int("dim", dim)
  _check_number("scale", scale, minimum=0.0, exclusive=True)
  codebook = jax.random.normal(rng, (k, d), jnp.float32) * scale
  if cosine:
    codebook = search.l2_normalize(codebook)
  return VQState(codebook=codebook, cluster_size=jnp.ones((k,), jnp.float32), embed_sum=codebook,
                 initialized=jnp.asarray(False))


# ----------------------------------------------------------------------------------------------------
# Forward.


def rotate_to(x: jax.Array, q: jax.Array) -> jax.Array:
  """Rotation-trick estimator (Fifty et al. 2024, "Restructuring vector quantization with the rotation
  trick"): q in value, gradient to x through a fixed rotation and rescale.

  With u = x/|x|, q̂ = q/|q|, w = normalise(u + q̂) and λ = |q|/|x| (all stop-gradient), the output is
  λ (x - 2 (x·w) w + 2 (x·u) q̂), which equals q in value and has Jacobian λ (I - 2 w wᵀ + 2 q̂ uᵀ) with
  respect to x: the rotation taking u to q̂, scaled. No gradient reaches q. A final straight-through
  correction makes the value exactly q even for x = 0 (where the rotation is undefined).

  Args:
    x: [N, D] float32 encoder outputs.
    q: [N, D] float32 chosen codes.

  Returns:
    [N, D] float32.
  """
  x_norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True))
  q_norm = sg(jnp.sqrt(jnp.sum(jnp.square(q), axis=-1, keepdims=True)))
  u = sg(x / jnp.maximum(x_norm, search.NORM_EPS))
  q_hat = sg(q / jnp.maximum(q_norm, search.NORM_EPS))
  # u + q̂ = 0 (antipodal) gives w = 0, and the formula still maps u to q̂ (x + 2|x| q̂ = |x| q̂ there).
  w = sg(search.l2_normalize(u + q_hat))
  rotated = (x - 2.0 * jnp.sum(x * w, axis=-1, keepdims=True) * w
             + 2.0 * jnp.sum(x * u, axis=-1, keepdims=True) * q_hat)
  out = rotated * sg(q_norm / jnp.maximum(x_norm, search.NORM_EPS))
  return out + sg(q - out)


def soft_assignment_entropy(x: jax.Array, codebook: jax.Array, *, temperature: float = 0.01,
                            max_block_elements: int = 2**24) -> tuple[jax.Array, jax.Array]:
  """Entropies of p = softmax(-||x - c||^2 / T) over codes (MaskGIT / GigaTok entropy loss).

  Computed over row chunks (and codebook blocks with a two-pass online log-sum-exp when K exceeds the
  budget), never holding more than `max_block_elements` logits. Differentiable in x and codebook.

  Args:
    x: [N, D] float32 vectors (already normalised for cosine codebooks).
    codebook: [K, D] float32 codes (likewise).
    temperature: T > 0.
    max_block_elements: most logits held at once.

  Returns:
    per_sample: float32 scalar, mean over rows of H(p_n), in [0, log K] (exact log-softmax, no epsilon).
    codebook: float32 scalar, H(mean_n p_n) in [0, log K] (log clamped at 1e-8, `base.entropy`).
  """
  search.check_pair(x, codebook)
  budget = base.check_positive_int("max_block_elements", max_block_elements)
  _check_number("temperature", temperature, minimum=0.0, exclusive=True)
  return _soft_assignment_entropy(x, codebook, temperature, budget=budget)


# Jitted bodies: checks stay in the Python wrappers; one compilation per shape and static setting when
# called eagerly, inlined when the caller is already jitted.
@functools.partial(jax.jit, static_argnames=("budget",))
def _soft_assignment_entropy(x, codebook, temperature, *, budget):
  x, codebook, cn = search.prepare(x, codebook, "euclidean")
  n, k = x.shape[0], codebook.shape[0]
  rows, codes = search.plan_blocks(n, k, budget)
  xc = search.strided_chunks(x, rows)
  row_ok = search.strided_chunks(jnp.ones((n,), jnp.float32), rows)
  # The dropped per-row ||x||^2 term shifts every logit of a row equally: softmax is unchanged.
  inv_t = 1.0 / temperature

  if codes >= k:
    def chunk(acc, inputs):
      xr, ok = inputs
      logits = -search.scores(xr, codebook, cn, "euclidean") * inv_t
      logp = jax.nn.log_softmax(logits, axis=-1)
      p = jnp.exp(logp)
      h = -jnp.sum(p * logp, axis=-1)
      return (acc[0] + jnp.sum(h * ok), acc[1] + jnp.sum(p * ok[:, None], axis=0)), None

    init = (jnp.zeros((), jnp.float32), jnp.zeros((k,), jnp.float32))
  else:
    cb, cnb, valid, _ = search._code_blocks(codebook, cn, codes)  # pylint: disable=protected-access
    nb = cb.shape[0]

    def chunk(acc, inputs):
      xr, ok = inputs
      r = xr.shape[0]

      def block_logits(c, c_norm, v):
        logits = -search.scores(xr, c, c_norm, "euclidean") * inv_t
        return jnp.where(v[None, :], logits, -jnp.inf)

      # Pass 1: online log-sum-exp per row, with s = sum exp(l - m) and t = sum exp(l - m) (l - m)
      # relative to the running max m, so H = lse - E_p[l] = log s - t / s has no cancellation of
      # large logits (T = 0.01 makes them large).
      def stats(carry, block):
        m, s, t = carry
        logits = block_logits(*block)
        m_new = jnp.maximum(m, sg(jnp.max(logits, axis=-1)))
        shifted = logits - m_new[:, None]
        e = jnp.exp(shifted)
        scale = jnp.exp(m - m_new)
        # Re-centre the old t on m_new; s = 0 before the first finite logit (m = -inf).
        t = scale * (t + jnp.where(s > 0, (m - m_new) * s, 0.0))
        s = s * scale + jnp.sum(e, axis=-1)
        t = t + jnp.sum(e * jnp.where(jnp.isfinite(shifted), shifted, 0.0), axis=-1)
        return (m_new, s, t), None

      init_stats = (jnp.full((r,), -jnp.inf, jnp.float32), jnp.zeros((r,), jnp.float32),
                    jnp.zeros((r,), jnp.float32))
      (m, s, t), _ = jax.lax.scan(stats, init_stats, (cb, cnb, valid))
      lse = m + jnp.log(s)
      h = jnp.log(s) - t / s

      # Pass 2: probabilities per code block, summed over (valid) rows.
      def probs(_, block):
        logits = block_logits(*block)
        return None, jnp.sum(jnp.exp(logits - lse[:, None]) * ok[:, None], axis=0)

      _, p_sum = jax.lax.scan(probs, None, (cb, cnb, valid))
      return (acc[0] + jnp.sum(h * ok), acc[1] + p_sum.reshape(nb * codes)[:k]), None

    init = (jnp.zeros((), jnp.float32), jnp.zeros((k,), jnp.float32))

  (h_sum, p_sum), _ = jax.lax.scan(chunk, init, (xc, row_ok))
  return h_sum / n, base.entropy(p_sum / n)


def quantize(z: jax.Array, state: VQState, *, rng: jax.Array | None = None, train: bool = False,
             beta: float = 0.25, codebook_weight: float = 1.0, cosine: bool = False,
             rotation_trick: bool = False, entropy_weight: float = 0.0,
             entropy_temperature: float = 0.01, entropy_gamma: float = 1.0,
             max_block_elements: int = 2**24) -> base.QuantizerOutput:
  """Replaces every vector of z by its nearest code.

  Args:
    z: [..., D] floating (any float dtype; computed in float32).
    state: VQState with codebook [K, D].
    rng, train: accepted for the common quantizer interface; this VQ is deterministic and behaves the
      same in both modes (EMA, dead-code restart and k-means are separate functions).
    beta: weight of the commitment loss beta * mse(z, sg(q)).
    codebook_weight: weight of the codebook loss mse(sg(z), q); 0 when codes are learnt by EMA.
    cosine: l2-normalise z and codes; codes are then unit vectors and losses are on the sphere.
    rotation_trick: rotation-trick gradient estimator instead of straight-through.
    entropy_weight: weight of the entropy loss (mean per-sample entropy - gamma * entropy of the mean
      distribution) of softmax(-||z - c||^2 / entropy_temperature); 0 skips it.
    entropy_temperature, entropy_gamma: see entropy_weight.
    max_block_elements: most distance entries held at once (search and entropy).

  Returns:
    QuantizerOutput: codes [..., D] in z.dtype (value = chosen codes, gradient to z straight-through
    or rotation trick), indices [...] int32, losses {commitment, codebook[, entropy]}, metrics {usage,
    perplexity, distortion (mean squared distance to the chosen code)[, per_sample_entropy,
    codebook_entropy]}.
  """
  k, d = _check_state(state)
  base.check_float_array("z", z, min_rank=1, last_dim=d)
  base.check_finite("z", z)
  for name, value in (("beta", beta), ("codebook_weight", codebook_weight),
                      ("entropy_weight", entropy_weight), ("entropy_gamma", entropy_gamma)):
    _check_number(name, value, minimum=0.0)
  _check_number("entropy_temperature", entropy_temperature, minimum=0.0, exclusive=True)
  budget = base.check_positive_int("max_block_elements", max_block_elements)
  del rng, train
  use_entropy = not isinstance(entropy_weight, numbers.Real) or entropy_weight > 0
  return _quantize(z, state.codebook, beta, codebook_weight, entropy_weight, entropy_temperature,
                   entropy_gamma, cosine=bool(cosine), rotation_trick=bool(rotation_trick),
                   use_entropy=use_entropy, budget=budget)


@functools.partial(jax.jit, static_argnames=("cosine", "rotation_trick", "use_entropy", "budget"))
def _quantize(z, codebook, beta, codebook_weight, entropy_weight, entropy_temperature, entropy_gamma, *,
              cosine, rotation_trick, use_entropy, budget):
  k, d = codebook.shape
  batch_shape = z.shape[:-1]
  x = _flatten(z, d, cosine=False)
  codebook = codebook.astype(jnp.float32)
  # The search gets the raw vectors and normalises them itself for cosine, so indices are exactly
  # those of `search.nearest(z, codebook, metric=...)` (2 - 2 x.c, not ||c||^2 - 2 x.c + ||x||^2).
  idx, sq_dist = search.nearest(sg(x), sg(codebook), metric="cosine" if cosine else "euclidean",
                                max_block_elements=budget)
  if cosine:
    x = search.l2_normalize(x)
    codebook = search.l2_normalize(codebook)
  q = jnp.take(codebook, idx, axis=0)

  losses = {
      "commitment": beta * jnp.mean(jnp.square(x - sg(q))),
      "codebook": codebook_weight * jnp.mean(jnp.square(sg(x) - q)),
  }
  metrics = dict(base.usage_metrics(idx, k))
  metrics["distortion"] = jnp.mean(sq_dist)
  if use_entropy:
    per_sample, codebook_h = _soft_assignment_entropy(x, codebook, entropy_temperature, budget=budget)
    losses["entropy"] = entropy_weight * (per_sample - entropy_gamma * codebook_h)
    metrics["per_sample_entropy"] = per_sample
    metrics["codebook_entropy"] = codebook_h

  out = rotate_to(x, q) if rotation_trick else base.straight_through(x, q)
  codes = out.reshape(batch_shape + (d,)).astype(z.dtype)
  return base.QuantizerOutput(codes=codes, indices=idx.reshape(batch_shape), losses=losses,
                              metrics=metrics)


def indices_to_codes(indices: jax.Array, state: VQState, *, cosine: bool = False) -> jax.Array:
  """Codes of integer indices: [...] -> [...] + [D] float32.

  Concrete indices outside [0, K) raise ValueError; under jit they cannot be seen and are clipped to
  the nearest valid index (`base.checkify_indices` turns that into a checkify error).
  With `cosine` the codes are l2-normalised, as `quantize(..., cosine=True)` returns them.
  """
  _check_state(state)
  base.check_int_array("indices", indices)
  base.check_indices("indices", indices, state.codebook.shape[0])
  codebook = state.codebook.astype(jnp.float32)
  if cosine:
    codebook = search.l2_normalize(codebook)
  return jnp.take(codebook, indices.astype(jnp.int32), axis=0, mode="clip")


# ----------------------------------------------------------------------------------------------------
# Codebook updates (pure, jittable; sums over N, so sharded z gives the unsharded answer).


def _counts_and_sums(x: jax.Array, idx: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
  """Per-code count [K] and sum of vectors [K, D]; indices outside [0, K) are dropped."""
  counts = jax.ops.segment_sum(jnp.ones(idx.shape, jnp.float32), idx, num_segments=k)
  sums = jax.ops.segment_sum(x, idx, num_segments=k)
  return counts, sums


def laplace_smooth(cluster_size: jax.Array, eps: float = 1e-5) -> jax.Array:
  """(n_k + eps) / (sum n + K eps) * sum n: no zero counts, same total."""
  total = jnp.sum(cluster_size)
  return (cluster_size + eps) / (total + cluster_size.shape[0] * eps) * total


def ema_update(state: VQState, z: jax.Array, indices: jax.Array, *, decay: float = 0.99,
               eps: float = 1e-5, cosine: bool = False) -> VQState:
  """One EMA step of the codebook (VQ-VAE-2 / SoundStream style).

    n' = decay n + (1 - decay) counts,   S' = decay S + (1 - decay) sums,
    codebook = S' / laplace_smooth(n'),  with counts/sums of z per assigned code.

  Args:
    state: VQState.
    z: [..., D] floating, the quantizer input (gradient is stopped here).
    indices: [...] integer codes of z (`quantize(...).indices`); out-of-range indices are ignored.
    decay: in [0, 1].
    eps: Laplace smoothing constant > 0.
    cosine: normalise z before accumulating and the new codes after.

  Returns:
    The new VQState (cluster_size stores the unsmoothed n'). A code whose smoothed count is 0 (only
    possible when every count is 0) keeps its code.
  """
  k, d = _check_state(state, full=True)
  base.check_float_array("z", z, min_rank=1, last_dim=d)
  base.check_int_array("indices", indices)
  if tuple(indices.shape) != tuple(z.shape[:-1]):
    raise ValueError(
        f"indices must have shape {tuple(z.shape[:-1])} (z's shape without D), got {tuple(indices.shape)}")
  _check_number("decay", decay, minimum=0.0, maximum=1.0)
  _check_number("eps", eps, minimum=0.0, exclusive=True)
  return _ema_update(state, z, indices, decay, eps, cosine=bool(cosine))


@functools.partial(jax.jit, static_argnames=("cosine",))
def _ema_update(state, z, indices, decay, eps, *, cosine):
  k, d = state.codebook.shape
  x = sg(_flatten(z, d, cosine))
  counts, sums = _counts_and_sums(x, indices.reshape(-1).astype(jnp.int32), k)
  cluster_size = decay * state.cluster_size.astype(jnp.float32) + (1.0 - decay) * counts
  embed_sum = decay * state.embed_sum.astype(jnp.float32) + (1.0 - decay) * sums
  smoothed = laplace_smooth(cluster_size, eps)
  codebook = jnp.where(smoothed[:, None] > 0, embed_sum / jnp.where(smoothed > 0, smoothed, 1.0)[:, None],
                       state.codebook.astype(jnp.float32))
  if cosine:
    codebook = search.l2_normalize(codebook)
  return VQState(codebook=codebook, cluster_size=cluster_size, embed_sum=embed_sum,
                 initialized=state.initialized)


def sample_vectors(rng: jax.Array, x: jax.Array, num: int) -> jax.Array:
  """`num` rows of x [N, D]: distinct rows when N >= num, otherwise drawn with replacement."""
  n = x.shape[0]
  if n >= num:
    rows = jax.random.choice(rng, n, (num,), replace=False)
  else:
    rows = jax.random.randint(rng, (num,), 0, n)
  return jnp.take(x, rows, axis=0)


def lloyd(x: jax.Array, means: jax.Array, *, iters: int = 10, cosine: bool = False,
          max_block_elements: int = 2**24) -> tuple[jax.Array, jax.Array]:
  """Lloyd's k-means iterations from `means`.

  Each iteration assigns every row of x to its nearest mean (`search.nearest`, lowest index on ties)
  and moves each mean to the average of its rows; a mean with no rows keeps its place. With `cosine`
  the assignment is by cosine and the means are re-normalised (spherical k-means).

  Args:
    x: [N, D] float32 data (unit rows when cosine).
    means: [K, D] float32 initial centres.
    iters: number of iterations >= 1 (static).

  Returns:
    means [K, D] float32 after `iters` updates; counts [K] float32 of the last assignment (the one
    that produced these means).
  """
  search.check_pair(x, means)
  iters = base.check_positive_int("iters", iters)
  budget = base.check_positive_int("max_block_elements", max_block_elements)
  return _lloyd(x, means, iters=iters, cosine=bool(cosine), budget=budget)


@functools.partial(jax.jit, static_argnames=("iters", "cosine", "budget"))
def _lloyd(x, means, *, iters, cosine, budget):
  x = x.astype(jnp.float32)
  means = means.astype(jnp.float32)
  k = means.shape[0]
  metric = "cosine" if cosine else "euclidean"

  def body(_, carry):
    means, _ = carry
    idx, _ = search.nearest(x, means, metric=metric, max_block_elements=budget)
    counts, sums = _counts_and_sums(x, idx, k)
    new = jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1.0)[:, None], means)
    if cosine:
      new = search.l2_normalize(new)
    return new, counts

  return jax.lax.fori_loop(0, iters, body, (means, jnp.zeros((k,), jnp.float32)))


def kmeans_init(state: VQState, z: jax.Array, rng: jax.Array, *, iters: int = 10, cosine: bool = False,
                max_block_elements: int = 2**24) -> VQState:
  """Codebook from k-means on a batch: K rows of z (`sample_vectors`) refined by `lloyd`.

  Sets codebook = means, cluster_size = counts, embed_sum = means * counts and initialized = True.
  Clusters left empty keep their centre and get cluster_size 0 (dead codes for `restart_dead_codes`).

  Args:
    state: VQState (only its shapes are used).
    z: [..., D] floating data (gradient is stopped).
    rng: PRNG key for the initial sample.
    iters: Lloyd iterations >= 1.
    cosine: spherical k-means on l2-normalised data.
  """
  k, d = _check_state(state)
  base.check_float_array("z", z, min_rank=1, last_dim=d)
  iters = base.check_positive_int("iters", iters)
  budget = base.check_positive_int("max_block_elements", max_block_elements)
  return _kmeans_init(state, z, rng, iters=iters, cosine=bool(cosine), budget=budget)


@functools.partial(jax.jit, static_argnames=("iters", "cosine", "budget"))
def _kmeans_init(state, z, rng, *, iters, cosine, budget):
  k, d = state.codebook.shape
  x = sg(_flatten(z, d, cosine))
  means, counts = _lloyd(x, sample_vectors(rng, x, k), iters=iters, cosine=cosine, budget=budget)
  return VQState(codebook=means, cluster_size=counts, embed_sum=means * counts[:, None],
                 initialized=jnp.asarray(True))


def maybe_kmeans_init(state: VQState, z: jax.Array, rng: jax.Array, *, iters: int = 10,
                      cosine: bool = False, max_block_elements: int = 2**24) -> VQState:
  """`kmeans_init` unless state.initialized (a `lax.cond`, so it can sit inside a jitted train step)."""
  _check_state(state, full=True)

  def run(_):
    new = kmeans_init(state, z, rng, iters=iters, cosine=cosine, max_block_elements=max_block_elements)
    return jax.tree.map(lambda a, b: a.astype(b.dtype), new, state)

  return jax.lax.cond(state.initialized, lambda _: state, run, None)


def restart_dead_codes(state: VQState, z: jax.Array, rng: jax.Array, *, threshold: float = 1.0,
                       cosine: bool = False) -> VQState:
  """Replaces codes with cluster_size < threshold by random vectors of z.

  A dead code k gets a vector v of z (distinct vectors when z has at least K rows): codebook_k = v,
  cluster_size_k = threshold, embed_sum_k = v * threshold. Live codes are unchanged.

  Args:
    state: VQState.
    z: [..., D] floating data (gradient is stopped); normalised first when cosine.
    rng: PRNG key.
    threshold: EMA count below which a code is dead (> 0).
  """
  k, d = _check_state(state, full=True)
  base.check_float_array("z", z, min_rank=1, last_dim=d)
  _check_number("threshold", threshold, minimum=0.0, exclusive=True)
  return _restart_dead_codes(state, z, rng, threshold, cosine=bool(cosine))


@functools.partial(jax.jit, static_argnames=("cosine",))
def _restart_dead_codes(state, z, rng, threshold, *, cosine):
  k, d = state.codebook.shape
  x = sg(_flatten(z, d, cosine))
  candidates = sample_vectors(rng, x, k)
  cluster_size = state.cluster_size.astype(jnp.float32)
  dead = cluster_size < threshold
  return VQState(
      codebook=jnp.where(dead[:, None], candidates, state.codebook.astype(jnp.float32)),
      cluster_size=jnp.where(dead, jnp.asarray(threshold, jnp.float32), cluster_size),
      embed_sum=jnp.where(dead[:, None], candidates * threshold, state.embed_sum.astype(jnp.float32)),
      initialized=state.initialized)
