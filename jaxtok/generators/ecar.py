"""E-CAR: stage-wise continuous-token generation with a multistage flow head (Yuan et al. 2024).

The G x G continuous token grid (a VAE's [N = G*G, D] row-major tokens) is generated in S stages at
sides r_k = G / 2^(S-1-k). A block-causal transformer (`TokenTrunk` with a stage mask) reads a
class (or null) token and, for each stage k, the previous stage's partially denoised map upsampled
to r_k (zeros for stage 0) plus learned position and stage embeddings; its outputs are per-token
conditions z. The per-token `FlowHead` v(x_t, t, z) then moves the stage's map only through the
stage's own time window (the multistage flow and its jumps: `jaxtok.samplers.ecar`), so the maps
are coarse and partly noisy early and reach the data only at the last stage.

Training (teacher forcing over all stages in one pass): `samplers.ecar.trajectory` draws each
stage's start/end states from the clean grid, coupled as the sampler couples them; per token a
local time tau ~ U(0, 1) gives x_t, t and the target velocity (end - start) / (e_k - s_k) (the
rectified-flow loss of the window); the loss is the mean squared error averaged per stage, then
over stages (each stage weighs the same, as Pyramid Flow's uniform choice of stage per sample).
The head reads t in this package's flow convention (t = 0 noise), not FlowHead's own.

Paper check (arXiv 2412.14170v2, checked 2026-12-06). What could be read of the paper: the abstract
and introduction (arxiv.org/html/2412.14170v2 as stored for search; its method section was not
retrievable there) and third-party summaries. They state: (1) stage-wise continuous token maps
M_1, ..., M_S, M_s in R^{(h_s w_s) x C}, at increasing resolution, M_S at the full latent size, each
generated in parallel by a hierarchical AR transformer and serving as the condition of the later
stages ("progressively refined token maps as hierarchical conditions"); (2) a multistage flow in
which each stage "transforms only partial-denoised distributions", i.e. the image is denoised
while the resolution grows, so the per-token flow work is divided by the stage count; (3) the
multistage flow follows Pyramidal Flow Matching. This module agrees with all three: the block-
causal trunk over [class, M_1, ..., M_S] is (1) (stage k reads U(end of stage k-1)), and the
windows and jumps of `jaxtok.samplers.ecar` are (2)-(3), whose math was checked against Pyramid
Flow's released scheduler and pipeline (see that module). No official E-CAR code was found, so
the equations the paper's method section may add (exact stage count and sides, the time split,
how the stage's time enters the head, per-stage loss weights) could not be compared; the choices
here (sides doubling to the grid, uniform boundaries, equal stage weights) are Pyramid Flow's.

Dimension names: B batch, G grid side, N = G*G tokens, D token dimension, W width, L = 1 + sum r_k^2.
"""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxtok.generators.grid import grid_shape
from jaxtok.generators.heads import FlowHead
from jaxtok.generators.trunk import TokenTrunk, check_generator_args, drop_classes
from jaxtok.nn.options import model_kwargs
from jaxtok.samplers import ecar as ms
from jaxtok.sharding import logical_init


FIELDS = ("token_dim", "seq_len", "num_stages", "num_classes", "width", "depth", "heads",
          "head_width", "head_depth", "class_dropout")


def stage_mask(sides) -> np.ndarray:
  """Block-causal mask bool [L, L] over [class token, stage 0 tokens, ..., stage S-1 tokens]: a
  token sees the class token and every token of its own and earlier stages."""
  ids = np.concatenate([[0]] + [np.full(r * r, k + 1) for k, r in enumerate(sides)])
  return ids[None, :] <= ids[:, None]


class ECAR(nnx.Module):
  """Block-causal stage transformer (conditions) + FlowHead (per-token multistage flow)."""

  def __init__(self, *, token_dim: int, seq_len: int, num_stages: int = 3, num_classes: int = 0,
               width: int = 768, depth: int = 12, heads: int = 12, head_width: int = 1024,
               head_depth: int = 3, class_dropout: float = 0.1, dtype=jnp.float32, remat="none",
               scan_layers: bool = False, attention_impl=None, rngs: nnx.Rngs):
    check_generator_args(num_classes=num_classes, class_dropout=class_dropout, token_dim=token_dim)
    side, _ = grid_shape(seq_len)
    self.sides = ms.stage_sides(side, num_stages)
    self.grid_side, self.num_stages = side, num_stages
    self.token_dim, self.seq_len, self.num_classes = token_dim, seq_len, num_classes
    self.class_dropout = class_dropout
    self.bounds = tuple(float(v) for v in ms.uniform_bounds(num_stages))
    length = 1 + sum(r * r for r in self.sides)
    init = nnx.initializers.normal(0.02)
    self.token_in = nnx.Linear(token_dim, width, kernel_init=logical_init(init, None, "embed"), rngs=rngs)
    self.pos_embedding = nnx.Param(logical_init(init, None, "embed")(rngs.params(), (length, width)))
    self.stage_embedding = nnx.Param(logical_init(init, None, "embed")(rngs.params(), (num_stages, width)))
    self.net = TokenTrunk(input_vocab=num_classes + 1, output_vocab=width, width=width, depth=depth,
                          heads=heads, causal=False, dtype=dtype, remat=remat,
                          scan_layers=scan_layers, attention_impl=attention_impl, rngs=rngs)
    self.head = FlowHead(token_dim=token_dim, cond_dim=width, width=head_width, depth=head_depth,
                         rngs=rngs)

  @property
  def null_id(self) -> int:
    return self.num_classes

  def condition_ids(self, labels, batch: int) -> jax.Array:
    """Class ids int32 [B]; -1 labels, None, or an unconditional model give the null id."""
    if labels is None or self.num_classes == 0:
      return jnp.full((batch,), self.null_id, jnp.int32)
    labels = jnp.asarray(labels, jnp.int32)
    return jnp.where(labels < 0, self.null_id, labels)

  def condition(self, inputs, labels=None, *, train: bool = False, rng=None) -> jax.Array:
    """Conditions z float32 [B, sum_{j<=k} r_j^2, W] of the tokens of stages 0..k, from the stage
    input maps inputs = (inputs_0 [B, r_0, r_0, D], ..., inputs_k) (any prefix of the stages:
    the block-causal mask makes the prefix's outputs those of the full sequence)."""
    k = len(inputs)
    if not 1 <= k <= self.num_stages:
      raise ValueError(f"inputs must hold 1..{self.num_stages} stage maps, got {k}")
    for j, m in enumerate(inputs):
      want = (self.sides[j], self.sides[j], self.token_dim)
      if tuple(m.shape[1:]) != want:
        raise ValueError(f"inputs[{j}] must be [B, {want[0]}, {want[1]}, {want[2]}], got {tuple(m.shape)}")
    b = inputs[0].shape[0]
    cond = drop_classes(self.condition_ids(labels, b), null_id=self.null_id,
                        class_dropout=self.class_dropout, num_classes=self.num_classes,
                        train=train, rng=rng)
    stage = self.stage_embedding.get_value()
    parts = [self.net.embed(cond)[:, None].astype(jnp.float32)]
    for j, m in enumerate(inputs):
      parts.append(self.token_in(m.reshape(b, -1, self.token_dim).astype(jnp.float32)) + stage[j])
    x = jnp.concatenate(parts, axis=1)
    length = x.shape[1]
    x = x + self.pos_embedding.get_value()[:length]
    mask = jnp.asarray(stage_mask(self.sides)[:length, :length])
    return self.net.forward_embedded(x, mask=mask)[:, 1:]

  def stage_condition(self, inputs, labels=None) -> jax.Array:
    """z float32 [B, r_k^2, W] of the last stage in `inputs` (the sampler's condition_fn)."""
    r = self.sides[len(inputs) - 1]
    return self.condition(inputs, labels)[:, -r * r:]

  def velocity(self, x: jax.Array, t, z: jax.Array) -> jax.Array:
    """Head velocity [M, D] float32 per unit of t (t = 0 noise, scalar or [M]) for x [M, D], z [M, W]."""
    t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (x.shape[0],))
    return self.head(x, t, z)


def loss(model: ECAR, tokens: jax.Array, labels, *, rng: jax.Array, train: bool = True, step=None):
  """Multistage flow loss of clean tokens [B, N, D] float and metrics {loss, loss_stage<k>}.
  `step` (part of the generator loss contract) does not change this objective."""
  del step
  b, n, d = tokens.shape
  if n != model.seq_len or d != model.token_dim:
    raise ValueError(f"tokens must be [B, {model.seq_len}, {model.token_dim}], got {tuple(tokens.shape)}")
  r_path, r_drop, r_time = jax.random.split(rng, 3)
  g = model.grid_side
  states = ms.trajectory(tokens.reshape(b, g, g, d), model.bounds, r_path)
  z = model.condition(tuple(s.inputs for s in states), labels, train=train, rng=r_drop)
  starts, ends = ms.windows(model.bounds)
  metrics, total, offset = {}, 0.0, 0
  for k, st in enumerate(states):
    r = model.sides[k]
    tau = jax.random.uniform(jax.random.fold_in(r_time, k), (b, r, r))
    x_t, t, v = ms.interpolate(st, float(starts[k]), float(ends[k]), tau)
    zk = z[:, offset:offset + r * r].reshape(b * r * r, -1)
    pred = model.head(x_t.reshape(-1, d), t.reshape(-1), zk)
    value = jnp.mean((pred - v.reshape(-1, d)) ** 2)
    metrics[f"loss_stage{k}"] = value
    total, offset = total + value, offset + r * r
  total = total / model.num_stages
  return total, dict(metrics, loss=total)


def make_model(cfg: Mapping, *, rngs: nnx.Rngs) -> ECAR:
  """An ECAR from its constructor's fields plus `nn.options.COMMON` and `name`; any other key
  raises ValueError."""
  return ECAR(**model_kwargs(cfg, FIELDS, model="ecar", cls=ECAR), rngs=rngs)
