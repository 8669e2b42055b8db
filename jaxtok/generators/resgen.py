"""ResGen (Kim et al. 2025, "Efficient Generative Modeling with Residual Vector Quantization-Based
Tokens"): masked generation of RVQ tokens by predicting the *sum* of the masked codes' embeddings.

Tokens x are int32 [B, N, Q]: N positions, Q residual levels (the paper's depth D), the ids of a
residual VQ whose level-q code vectors are the rows of `codebook[q]` ([Q, C, E]: the tokenizer's
effective codes, unit vectors for a cosine RVQ, frozen here). A position's latent is the sum of its Q
codes.

Depth-wise masking (the forward process of the discrete-diffusion view). A mask is a set of
(position, level) pairs that always takes the deepest levels first: with n masked pairs, level Q-1 is
masked at every position before level Q-2 is touched, and so on; within the one partly masked level
the positions are chosen by a score (random in training, low confidence first when sampling). Every
position's masked levels therefore form a suffix {d_l, ..., Q-1}: the coarse codes are known, the fine
ones are not. `depthwise_mask` builds it from per-position scores and the count n. In training the
count is n = ceil(gamma(t) N Q), t ~ U(0, 1), with MaskGIT's cosine gamma (the schedule of the
released MaskGIT-style ResGen training; `samplers.schedules.cosine`).

The network. The input of position l is the sum of its unmasked codes (the partial sum) plus a learned
mask vector per masked level (so the network sees how many levels are missing), projected to the
width; a class token is put in front and a bidirectional `TokenTrunk` runs over [cls, x_1..x_N]. Its
head outputs, per position, a mixture of M diagonal Gaussians over the code space E: mixture logits
[M], means [M, E] and log-scales [M, E]. The target of position l is the collective vector: the sum of
its masked codes, sum_{q >= d_l} codebook[q][x_{l,q}]; the loss is its negative log-likelihood under
the mixture (`mog_nll`), averaged over the positions with at least one masked level and divided by E
(nats per dimension).

Decoding a predicted vector back to tokens (`requantize`): greedy residual quantisation over the
masked levels of each position only, starting from the predicted vector: level q picks the nearest
code of the residual and subtracts it. When the prediction is exactly the collective vector and the
codes are those a greedy RVQ would pick, this recovers the masked tokens exactly (tested).

Sampling (`jaxtok.samplers.resgen`): start fully masked; each step predicts the mixture, draws a
vector per position, re-quantizes it, and keeps a smaller depth-wise mask chosen by confidence.

Dimension names: B batch, N positions, Q levels, C codes per level, E code dimension, M mixture
components, W width.
"""
from __future__ import annotations

import math
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxtok.generators.trunk import TokenTrunk, check_generator_args, class_condition
from jaxtok.nn.options import model_kwargs
from jaxtok.quantizers import search
from jaxtok.samplers import schedules
from jaxtok.sharding import logical_init

FIELDS = ("num_levels", "codebook_size", "code_dim", "seq_len", "num_classes", "width", "depth",
          "heads", "mlp_ratio", "num_mixtures", "class_dropout", "codebook", "schedule")
# Smallest log standard deviation of a mixture component: keeps the NLL finite when a target is hit
# exactly (a code vector sum the network can memorise).
MIN_LOG_SCALE = -7.0
_LOG_2PI = math.log(2.0 * math.pi)


# ----------------------------------------------------------------------------------------------------
# Masking, collective vectors, re-quantisation: pure functions.


def depthwise_mask(scores: jax.Array, count: jax.Array, num_levels: int) -> jax.Array:
  """The depth-wise mask bool [B, N, Q] of `count` pairs, deepest levels first.

  Args:
    scores: [B, N] float or int, distinct per row: higher = masked earlier within a level.
    count: [B] int (or scalar), number of masked (position, level) pairs, in [0, N Q].
    num_levels: Q.

  Pair (l, q) gets the key q N + rank(scores_l) (rank 0 = lowest score); the `count` largest keys are
  masked: all of levels > q*, and the top-scored positions of level q*.
  """
  b, n = scores.shape
  rank = jnp.argsort(jnp.argsort(scores, axis=1), axis=1)  # [B, N] in [0, N)
  key = jnp.arange(num_levels)[None, None, :] * n + rank[:, :, None]
  count = jnp.broadcast_to(jnp.asarray(count, jnp.int32), (b,))
  return key >= (n * num_levels - count)[:, None, None]


def training_mask(rng: jax.Array, batch: int, length: int, num_levels: int, *,
                  schedule: str = "cosine") -> jax.Array:
  """The training mask [B, N, Q] bool: t ~ U(0, 1), n = ceil(gamma(t) N Q) clipped to [1, N Q]
  pairs, positions ordered by uniform scores (`depthwise_mask`)."""
  r_t, r_s = jax.random.split(rng)
  t = jax.random.uniform(r_t, (batch,))
  total = length * num_levels
  gamma = _gamma(schedule, t)
  count = jnp.clip(jnp.ceil(gamma * total), 1, total).astype(jnp.int32)
  return depthwise_mask(jax.random.uniform(r_s, (batch, length)), count, num_levels)


def _gamma(schedule: str, t: jax.Array) -> jax.Array:
  """gamma(t) of `samplers.schedules` evaluated in jnp (the numpy versions run on the host)."""
  if schedule == "cosine":
    return jnp.cos(t * (math.pi / 2))
  if schedule == "linear":
    return 1.0 - t
  if schedule == "arccos":
    return jnp.arccos(t) / (math.pi / 2)
  schedules.get(schedule)  # raises for an unknown name
  return 1.0 - t ** float(schedule[4:])


def code_vectors(tokens: jax.Array, table: jax.Array) -> jax.Array:
  """Per-level code vectors float32 [B, N, Q, E] of tokens int [B, N, Q] (table [Q, C, E])."""
  q = table.shape[0]
  return table[jnp.arange(q)[None, None, :], tokens.astype(jnp.int32)].astype(jnp.float32)


def split_sums(tokens: jax.Array, mask: jax.Array, table: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(partial sum of the unmasked codes, collective vector of the masked codes), each float32
  [B, N, E]; their sum is the position's full RVQ latent."""
  v = code_vectors(tokens, table)
  m = mask[..., None]
  return jnp.sum(jnp.where(m, 0.0, v), axis=2), jnp.sum(jnp.where(m, v, 0.0), axis=2)


def requantize(pred: jax.Array, mask: jax.Array, table: jax.Array) -> jax.Array:
  """Tokens int32 [B, N, Q] of predicted collective vectors pred [B, N, E]: greedy residual
  quantisation over each position's masked levels (0 where a level is not masked).

  Level by level (shallow to deep) the residual, which starts at pred, is matched to the nearest code
  of that level (squared L2; lowest index on ties) and, where the level is masked, the code is
  subtracted.
  """
  b, n, e = pred.shape
  residual = pred.reshape(b * n, e).astype(jnp.float32)
  out = []
  for q in range(table.shape[0]):
    idx, _ = search.nearest(residual, table[q].astype(jnp.float32))
    m = mask[..., q].reshape(b * n)
    residual = residual - jnp.where(m[:, None], table[q][idx].astype(jnp.float32), 0.0)
    out.append(jnp.where(m, idx, 0))
  return jnp.stack(out, axis=-1).reshape(b, n, -1).astype(jnp.int32)


# ----------------------------------------------------------------------------------------------------
# The mixture of Gaussians.


def mog_log_prob(logits: jax.Array, means: jax.Array, log_scales: jax.Array,
                 x: jax.Array) -> jax.Array:
  """log p(x) float32 [...] under a mixture of diagonal Gaussians.

  Args:
    logits: [..., M] mixture logits (softmax = weights).
    means, log_scales: [..., M, E] (log standard deviations).
    x: [..., E].

  log p(x) = logsumexp_k [log pi_k + sum_e (-(x_e - mu_ke)^2 / (2 s_ke^2) - log s_ke - log(2 pi)/2)].
  """
  x = x.astype(jnp.float32)[..., None, :]
  z = (x - means.astype(jnp.float32)) * jnp.exp(-log_scales.astype(jnp.float32))
  comp = jnp.sum(-0.5 * z * z - log_scales - 0.5 * _LOG_2PI, axis=-1)
  return jax.nn.logsumexp(jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1) + comp, axis=-1)


def mog_nll(logits, means, log_scales, x) -> jax.Array:
  """-log p(x) float32 [...] (see `mog_log_prob`)."""
  return -mog_log_prob(logits, means, log_scales, x)


def mog_sample(rng: jax.Array, logits: jax.Array, means: jax.Array, log_scales: jax.Array, *,
               temperature: float = 1.0) -> jax.Array:
  """One draw float32 [..., E]: a component k ~ softmax(logits), then mu_k + t s_k eps (t the
  temperature; t = 0 gives the chosen component's mean)."""
  r_k, r_e = jax.random.split(rng)
  k = jax.random.categorical(r_k, logits.astype(jnp.float32), axis=-1)
  pick = lambda a: jnp.take_along_axis(a, k[..., None, None], axis=-2)[..., 0, :]
  mu, s = pick(means.astype(jnp.float32)), jnp.exp(pick(log_scales.astype(jnp.float32)))
  return mu + temperature * s * jax.random.normal(r_e, mu.shape)


# ----------------------------------------------------------------------------------------------------
# The model.


class ResGen(nnx.Module):
  """Bidirectional trunk over partial-sum embeddings with a mixture-of-Gaussians head.

  Args:
    num_levels: Q (RVQ depth); codebook_size: C; code_dim: E; seq_len: N.
    num_classes: C_cls (0: unconditional); id C_cls is the null class.
    width, depth, heads, mlp_ratio: the `TokenTrunk`.
    num_mixtures: M.
    class_dropout: chance a training label becomes the null class (for guidance-free conditioning).
    codebook: path of a float32 [Q, C, E] .npy of the tokenizer's effective codes (tools/pretokenize
      writes <data>/codebook.npy for an RVQ tokenizer); "" initialises random codes of scale 2^-q
      (tests, benchmarks). Kept as the `codebook` parameter, stop-gradient'ed wherever it is read
      (a zero gradient leaves it exactly unchanged under Adam; "codebook" is in the optimizer's
      no-decay patterns).
    schedule: training mask schedule gamma (cosine, linear, arccos, pow:P).
  """

  def __init__(self, *, num_levels: int, codebook_size: int, code_dim: int, seq_len: int,
               num_classes: int = 0, width: int = 768, depth: int = 12, heads: int = 12,
               mlp_ratio: float = 4.0, num_mixtures: int = 16, class_dropout: float = 0.1,
               codebook: str = "", schedule: str = "cosine", dtype=jnp.float32, remat="none",
               scan_layers: bool = False, attention_impl=None, rngs: nnx.Rngs):
    check_generator_args(num_classes=num_classes, class_dropout=class_dropout,
                         num_levels=num_levels, codebook_size=codebook_size, code_dim=code_dim,
                         seq_len=seq_len, num_mixtures=num_mixtures)
    schedules.get(schedule)
    self.num_levels, self.codebook_size, self.code_dim = num_levels, codebook_size, code_dim
    self.seq_len, self.num_classes, self.num_mixtures = seq_len, num_classes, num_mixtures
    self.class_dropout, self.schedule = class_dropout, schedule
    shape = (num_levels, codebook_size, code_dim)
    if codebook:
      table = np.load(codebook).astype(np.float32)
      if table.shape != shape:
        raise ValueError(f"codebook {codebook!r} must hold [num_levels, codebook_size, code_dim] = "
                         f"{list(shape)}, got {list(table.shape)}")
      table = jnp.asarray(table)
    else:
      scale = jnp.asarray(0.5 ** np.arange(num_levels), jnp.float32)[:, None, None]
      table = jax.random.normal(rngs.params(), shape, jnp.float32) * scale
    self.codebook = nnx.Param(table)
    init = nnx.initializers.normal(0.02)
    self.mask_embedding = nnx.Param(init(rngs.params(), (num_levels, code_dim)))
    self.token_in = nnx.Linear(code_dim, width, kernel_init=logical_init(init, None, "embed"),
                               rngs=rngs)
    self.net = TokenTrunk(input_vocab=num_classes + 1,
                          output_vocab=num_mixtures * (1 + 2 * code_dim), width=width, depth=depth,
                          heads=heads, mlp_ratio=mlp_ratio, causal=False, dtype=dtype, remat=remat,
                          scan_layers=scan_layers, attention_impl=attention_impl, rngs=rngs)

  @property
  def null_id(self) -> int:
    return self.num_classes

  def table(self) -> jax.Array:
    """The frozen code table float32 [Q, C, E] (gradient stopped)."""
    return jax.lax.stop_gradient(self.codebook.get_value().astype(jnp.float32))

  def condition_ids(self, labels, batch: int, *, train: bool = False, rng=None) -> jax.Array:
    """Class ids [B] int32: labels < 0 (or an unconditional model) -> the null id; class dropout in
    training."""
    return class_condition(labels, batch, null_id=self.null_id, num_classes=self.num_classes,
                           class_dropout=self.class_dropout, train=train, rng=rng)

  def __call__(self, tokens: jax.Array, mask: jax.Array, labels=None, *, train: bool = False,
               rng=None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Mixture parameters for tokens int [B, N, Q] under mask bool [B, N, Q] (True = unknown; those
    ids are ignored): (logits [B, N, M], means [B, N, M, E], log_scales [B, N, M, E]) float32."""
    b, n, q = tokens.shape
    if (n, q) != (self.seq_len, self.num_levels):
      raise ValueError(f"tokens must be [B, {self.seq_len}, {self.num_levels}], got "
                       f"{tuple(tokens.shape)}")
    partial, _ = split_sums(tokens, mask, self.table())
    masked = jnp.einsum("bnq,qe->bne", mask.astype(jnp.float32), self.mask_embedding.get_value())
    x = self.token_in(partial + masked)
    cond = self.condition_ids(labels, b, train=train, rng=rng)
    x = jnp.concatenate([self.net.embed(cond)[:, None].astype(x.dtype), x], axis=1)
    out = self.net.forward_embedded(x)[:, 1:]
    m, e = self.num_mixtures, self.code_dim
    logits = out[..., :m]
    means = out[..., m:m + m * e].reshape(b, n, m, e)
    log_scales = jnp.maximum(out[..., m + m * e:].reshape(b, n, m, e), MIN_LOG_SCALE)
    return logits, means, log_scales


def loss(model: ResGen, tokens: jax.Array, labels, *, rng: jax.Array, train: bool = True,
         step=None):
  """Mixture NLL (nats per code dimension) of the collective vectors of the masked levels, averaged
  over positions with a masked level; metrics {loss, mask_ratio}. `step` is unused."""
  del step
  r_mask, r_drop = jax.random.split(rng)
  b, n, q = tokens.shape
  mask = training_mask(r_mask, b, n, q, schedule=model.schedule)
  _, target = split_sums(tokens, mask, model.table())
  logits, means, log_scales = model(tokens, mask, labels, train=train, rng=r_drop)
  nll = mog_nll(logits, means, log_scales, target) / model.code_dim
  w = jnp.any(mask, axis=-1).astype(jnp.float32)
  value = jnp.sum(nll * w) / jnp.maximum(w.sum(), 1.0)
  return value, {"loss": value, "mask_ratio": mask.mean()}


def make_model(cfg: Mapping, *, rngs: nnx.Rngs) -> ResGen:
  """A ResGen from its constructor's fields plus `nn.options.COMMON` and `name`; any other key raises
  ValueError."""
  return ResGen(**model_kwargs(cfg, FIELDS, model="resgen", cls=ResGen), rngs=rngs)


def generate(model: ResGen, rng: jax.Array, labels: jax.Array, opts) -> jax.Array:
  """Tokens int32 [B, N, Q] for labels int32 [B] with `samplers.resgen.sample` (the generate
  dispatch's entry; opts: `eval.generate.Options`: steps, schedule, temperature,
  choice_temperature)."""
  from jaxtok.samplers import resgen as sampler  # pylint: disable=g-import-not-at-top
  out = sampler.sample(rng, lambda tok, mask, cond: model(tok, mask, cond), model.table(),
                       batch=labels.shape[0], seq_len=model.seq_len,
                       steps=opts.steps or min(8, model.seq_len * model.num_levels),
                       schedule=opts.schedule, temperature=opts.temperature,
                       choice_temperature=opts.choice_temperature, cond=labels)
  return out
