"""Hi-MAR: hierarchical masked autoregression over continuous tokens with low-resolution token
pivots ("Hierarchical Masked Autoregressive Models with Low-Resolution Token
Pivots"; official code HiDream-ai/himar).

The dense h x w token grid [B, N, D] has pivots: the grid average-pooled by `pivot_factor` f
(`entities.avg_pool`), P = (h/f)(w/f) tokens [B, P, D] that carry the global structure. One
bidirectional MAR transformer reads [class, pivots, dense tokens] (learned position embedding,
learned mask embedding at unknown positions) in two phases, told apart by a learned phase
embedding added to every input (the release switches per-task AdaLN tables instead):

  phase 1 (pivots): some pivots known, the rest and *all* dense tokens masked; conditions z for
    the pivot positions.
  phase 2 (dense): every pivot known, some dense tokens known; conditions z for the dense positions.

A `FlowHead` (MAR's per-token MLP, rectified flow) turns z into tokens; it is scale-aware: its
condition is z plus a learned per-phase embedding, so the same head knows whether it draws a
pivot (a pooled, smoother token) or a dense token. Training (`loss`): phase 1 masks a truncated-
normal fraction of pivots (MAR's, from 0.7), phase 2 masks a truncated-normal fraction of dense
tokens from 0.38 (the release's second ratio generator), both heads' flow losses on the masked
positions, weighted 2.0 and 0.75 as in the release. Sampling (`samplers.himar`): MAR's loop over
the pivots, then MAR's loop over the dense tokens given the pivots.

Left out of the release: its DiT head attending across all tokens of phase 2 (a per-token
FlowHead here), the phase-1 features of the pivots fed to phase 2, and phase-2 pivot dropout.

Dimension names: B batch, N dense tokens, P pivots, D token dimension, W width.
"""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtok.generators import entities
from jaxtok.generators.grid import grid_shape
from jaxtok.generators.heads import flow_loss_per_row
from jaxtok.generators.mar import MAR, training_mask
from jaxtok.generators.trunk import check_generator_args, drop_classes
from jaxtok.nn.options import model_kwargs
from jaxtok.sharding import logical_init

FIELDS = ("token_dim", "seq_len", "grid_width", "pivot_factor", "num_classes", "width", "depth",
          "heads", "head_width", "head_depth", "class_dropout")
PIVOTS, DENSE = 0, 1  # the phases
LOSS_WEIGHTS = (2.0, 0.75)  # the release's pivot and dense loss weights
DENSE_MIN_RATIO = 0.38  # the release's lower bound of the phase-2 mask ratio


def pivots_of(tokens: jax.Array, h: int, w: int, f: int) -> jax.Array:
  """Pivots [B, (h/f)(w/f), D] float32: the row-major dense grid tokens [B, h w, D] average-pooled
  over f x f squares."""
  b, n, d = tokens.shape
  return entities.avg_pool(tokens.astype(jnp.float32).reshape(b, h, w, d), f).reshape(b, -1, d)


class HiMAR(nnx.Module):
  """Two-phase masked continuous-token model: transformer (conditions) + scale-aware FlowHead."""

  def __init__(self, *, token_dim: int, seq_len: int, grid_width: int = 0, pivot_factor: int = 4,
               num_classes: int = 0, width: int = 768, depth: int = 12, heads: int = 12,
               head_width: int = 1024, head_depth: int = 3, class_dropout: float = 0.1,
               dtype=jnp.float32, remat="none", scan_layers: bool = False, attention_impl=None,
               rngs: nnx.Rngs):
    check_generator_args(num_classes=num_classes, class_dropout=class_dropout, token_dim=token_dim)
    self.h, self.w = grid_shape(seq_len, grid_width)
    if pivot_factor < 2 or self.h % pivot_factor or self.w % pivot_factor:
      raise ValueError(f"pivot_factor must be >= 2 and divide both grid sides {self.h} x {self.w}, "
                       f"got {pivot_factor}")
    self.token_dim, self.seq_len, self.num_classes = token_dim, seq_len, num_classes
    self.pivot_factor, self.class_dropout = pivot_factor, class_dropout
    self.num_pivots = (self.h // pivot_factor) * (self.w // pivot_factor)
    # The transformer and head are MAR's, over the P + N positions [pivots, dense].
    self.mar = MAR(token_dim=token_dim, seq_len=self.num_pivots + seq_len, num_classes=num_classes,
                   width=width, depth=depth, heads=heads, head_width=head_width,
                   head_depth=head_depth, class_dropout=class_dropout, dtype=dtype, remat=remat,
                   scan_layers=scan_layers, attention_impl=attention_impl, rngs=rngs)
    init = logical_init(nnx.initializers.normal(0.02), None, "embed")
    self.phase_embedding = nnx.Param(init(rngs.params(), (2, width)))
    self.head_phase_embedding = nnx.Param(init(rngs.params(), (2, width)))

  @property
  def null_id(self) -> int:
    return self.num_classes

  @property
  def pivot_iters(self) -> int:
    """Phase-1 iterations of the release's sampler: 4 x the pivot grid side (at most P)."""
    side = self.h // self.pivot_factor
    return min(self.num_pivots, 4 * side)

  def pivots(self, tokens: jax.Array) -> jax.Array:
    """Pivots [B, P, D] float32 of dense tokens [B, N, D]."""
    return pivots_of(tokens, self.h, self.w, self.pivot_factor)

  def class_ids(self, labels, batch):
    if labels is None or self.num_classes == 0:
      return jnp.full((batch,), self.null_id, jnp.int32)
    labels = jnp.asarray(labels, jnp.int32)
    return jnp.where(labels < 0, self.null_id, labels)

  def condition(self, pivots: jax.Array, pivot_mask: jax.Array, dense: jax.Array,
                dense_mask: jax.Array, labels, phase: int) -> jax.Array:
    """Conditions z [B, P + N, W] float32 from pivots [B, P, D], dense [B, N, D] and their masks
    [B, P] / [B, N] bool (True = unknown; those values are ignored); labels int32 [B] (-1 / the
    null id: unconditional) or None; phase PIVOTS (0) or DENSE (1)."""
    b = pivots.shape[0]
    if pivots.shape[1:] != (self.num_pivots, self.token_dim) or dense.shape[1:] != (
        self.seq_len, self.token_dim):
      raise ValueError(f"pivots must be [B, {self.num_pivots}, {self.token_dim}] and dense "
                       f"[B, {self.seq_len}, {self.token_dim}], got {tuple(pivots.shape)} and "
                       f"{tuple(dense.shape)}")
    return self.mar.condition(jnp.concatenate([pivots, dense], axis=1),
                              jnp.concatenate([pivot_mask, dense_mask], axis=1),
                              self.class_ids(labels, b),
                              offset=self.phase_embedding.get_value()[phase])

  def condition_pivots(self, pivots: jax.Array, mask: jax.Array, labels=None) -> jax.Array:
    """Phase 1: z [B, P, W] of the pivot positions; every dense token is masked."""
    b = pivots.shape[0]
    dense = jnp.zeros((b, self.seq_len, self.token_dim), jnp.float32)
    return self.condition(pivots, mask, dense, jnp.ones((b, self.seq_len), bool), labels,
                          PIVOTS)[:, :self.num_pivots]

  def condition_dense(self, dense: jax.Array, mask: jax.Array, labels_and_pivots) -> jax.Array:
    """Phase 2: z [B, N, W] of the dense positions given all pivots; labels_and_pivots =
    (labels [B] or None, pivots [B, P, D]) (one pytree, so guidance can double it)."""
    labels, pivots = labels_and_pivots
    b = dense.shape[0]
    return self.condition(pivots, jnp.zeros((b, self.num_pivots), bool), dense, mask, labels,
                          DENSE)[:, self.num_pivots:]

  def head_velocity(self, x_t: jax.Array, t: jax.Array, z: jax.Array, phase: int) -> jax.Array:
    """The scale-aware head: FlowHead velocity [M, D] (t [M], t = 1 noise) with condition z [M, W]
    plus the phase's head embedding."""
    return self.mar.head(x_t, t, z + self.head_phase_embedding.get_value()[phase])


def loss(model: HiMAR, tokens: jax.Array, labels, *, rng: jax.Array, batch_mul: int = 4,
         train: bool = True, step=None):
  """2.0 x pivot flow loss + 0.75 x dense flow loss on the masked positions; metrics {loss,
  pivot_loss, dense_loss}. `step` does not change the objective."""
  del step
  b, n, d = tokens.shape
  if n != model.seq_len or d != model.token_dim:
    raise ValueError(f"tokens must be [B, {model.seq_len}, {model.token_dim}], got "
                     f"{tuple(tokens.shape)}")
  r_m1, r_m2, r_drop, r_f1, r_f2 = jax.random.split(rng, 5)
  tokens = tokens.astype(jnp.float32)
  pivots = model.pivots(tokens)
  labels = drop_classes(model.class_ids(labels, b), null_id=model.null_id,
                        class_dropout=model.class_dropout, num_classes=model.num_classes,
                        train=train, rng=r_drop)

  def phase_loss(x, z, mask, phase, key):
    m = x.shape[1]
    head = lambda x_t, t, zz: model.head_velocity(x_t, t, zz, phase)
    per_row = flow_loss_per_row(head, x.reshape(b * m, d), z.reshape(b * m, -1), key,
                                batch_mul=batch_mul)
    w = mask.reshape(-1).astype(jnp.float32)
    return jnp.sum(per_row * w) / jnp.maximum(w.sum(), 1.0)

  m1 = training_mask(r_m1, b, model.num_pivots)
  l1 = phase_loss(pivots, model.condition_pivots(pivots, m1, labels), m1, PIVOTS, r_f1)
  m2 = training_mask(r_m2, b, n, min_ratio=DENSE_MIN_RATIO)
  l2 = phase_loss(tokens, model.condition_dense(tokens, m2, (labels, pivots)), m2, DENSE, r_f2)
  value = LOSS_WEIGHTS[0] * l1 + LOSS_WEIGHTS[1] * l2
  return value, {"loss": value, "pivot_loss": l1, "dense_loss": l2}


def make_model(cfg: Mapping, *, rngs: nnx.Rngs) -> HiMAR:
  """A HiMAR from its constructor's fields plus `nn.options.COMMON` and `name`; any other key raises
  ValueError."""
  return HiMAR(**model_kwargs(cfg, FIELDS, model="himar", cls=HiMAR), rngs=rngs)
