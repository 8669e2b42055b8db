"""MAR: masked autoregressive modelling of continuous tokens with a per-token flow head.

A bidirectional transformer reads the known continuous tokens (linearly embedded), a learned mask
embedding at unknown positions and a class (or null) token in front, and produces a condition vector
z for every position; the `FlowHead` turns z into a token by integrating a rectified flow. Training
masks a random fraction of positions per sample (MAR draws the ratio from a truncated normal on
[0.7, 1] with mean 1 and std 0.25) and applies the flow loss on the masked positions only.

Generation (random order, a cosine number of new positions per iteration, guidance, and diffusion
step annealing of the head, DiSA) runs in jaxtok.samplers.mar with `condition` and the head as the
callables.

Dimension names: B batch, N tokens, D token dimension, W width, C classes.
"""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtok.generators.heads import FlowHead, flow_loss_per_row
from jaxtok.generators.trunk import TokenTrunk, check_generator_args
from jaxtok.nn.options import model_kwargs
from jaxtok.sharding import logical_init


FIELDS = ("token_dim", "seq_len", "num_classes", "width", "depth", "heads", "head_width",
          "head_depth", "class_dropout")


class MAR(nnx.Module):
  """Masked continuous-token model: transformer (conditions) + FlowHead (token sampler)."""

  def __init__(self, *, token_dim: int, seq_len: int, num_classes: int = 0, width: int = 768,
               depth: int = 12, heads: int = 12, head_width: int = 1024, head_depth: int = 3,
               class_dropout: float = 0.1, dtype=jnp.float32, remat="none",
               scan_layers: bool = False, attention_impl=None, rngs: nnx.Rngs):
    check_generator_args(num_classes=num_classes, class_dropout=class_dropout, token_dim=token_dim,
                         seq_len=seq_len)
    self.token_dim, self.seq_len, self.num_classes = token_dim, seq_len, num_classes
    self.class_dropout = class_dropout
    init = nnx.initializers.normal(0.02)
    self.token_in = nnx.Linear(token_dim, width, kernel_init=logical_init(init, None, "embed"), rngs=rngs)
    self.mask_embedding = nnx.Param(logical_init(init, "embed")(rngs.params(), (width,)))
    self.pos_embedding = nnx.Param(logical_init(init, None, "embed")(rngs.params(), (seq_len + 1, width)))
    # Output "vocabulary" = the condition width: the transformer's head is the projection to z.
    self.net = TokenTrunk(input_vocab=num_classes + 1, output_vocab=width, width=width, depth=depth,
                          heads=heads, causal=False, dtype=dtype, remat=remat,
                          scan_layers=scan_layers, attention_impl=attention_impl, rngs=rngs)
    self.head = self.make_head(token_dim=token_dim, cond_dim=width, width=head_width,
                               depth=head_depth, rngs=rngs)

  def make_head(self, *, token_dim, cond_dim, width, depth, rngs):
    """The per-token head on the conditions z (FlowHead here; TokenBridge overrides it)."""
    return FlowHead(token_dim=token_dim, cond_dim=cond_dim, width=width, depth=depth, rngs=rngs)

  @property
  def null_id(self) -> int:
    return self.num_classes

  def condition(self, tokens: jax.Array, mask: jax.Array, labels=None, *, train: bool = False,
                rng=None, offset: jax.Array | None = None) -> jax.Array:
    """Per-position conditions z [B, N, W] float32 from tokens [B, N, D] and mask [B, N] (True =
    unknown; those tokens' values are ignored). offset [W]: added to every input (Hi-MAR's phase
    embedding)."""
    b, n, d = tokens.shape
    if n != self.seq_len or d != self.token_dim:
      raise ValueError(f"tokens must be [B, {self.seq_len}, {self.token_dim}], got {tuple(tokens.shape)}")
    cond = (jnp.full((b,), self.null_id, jnp.int32) if labels is None or self.num_classes == 0
            else jnp.where(jnp.asarray(labels) < 0, self.null_id, jnp.asarray(labels, jnp.int32)))
    if train and self.class_dropout > 0 and self.num_classes > 0:
      if rng is None:
        raise ValueError("train=True with class_dropout > 0 needs rng")
      cond = jnp.where(jax.random.bernoulli(rng, self.class_dropout, (b,)), self.null_id, cond)
    x = self.token_in(tokens.astype(jnp.float32))
    x = jnp.where(mask[..., None], self.mask_embedding.get_value(), x)
    x = jnp.concatenate([self.net.embed(cond)[:, None].astype(x.dtype), x], axis=1)
    x = x + self.pos_embedding.get_value()
    if offset is not None:
      x = x + offset
    return self.net.forward_embedded(x)[:, 1:]


def training_mask(rng: jax.Array, batch: int, length: int, *, min_ratio: float = 0.7,
                  std: float = 0.25) -> jax.Array:
  """MAR's training mask [B, N] bool: ratio ~ N(1, std) truncated to [min_ratio, 1]; round(N r)
  positions (at least 1) chosen uniformly."""
  r1, r2 = jax.random.split(rng)
  lo = (min_ratio - 1.0) / std
  ratio = 1.0 + std * jax.random.truncated_normal(r1, lo, 0.0, (batch,))
  count = jnp.maximum(1, jnp.round(length * ratio)).astype(jnp.int32)
  ranks = jnp.argsort(jnp.argsort(jax.random.uniform(r2, (batch, length)), axis=1), axis=1)
  return ranks < count[:, None]


def loss(model: MAR, tokens: jax.Array, labels, *, rng: jax.Array, batch_mul: int = 4,
         train: bool = True, step=None):
  """Flow loss on masked positions, and metrics {loss, mask_ratio}. `step` (the training step,
  part of the generator loss contract) does not change this objective."""
  del step
  r_mask, r_drop, r_flow = jax.random.split(rng, 3)
  b, n, d = tokens.shape
  mask = training_mask(r_mask, b, n)
  z = model.condition(tokens, mask, labels, train=train, rng=r_drop)
  # Gather a static number of rows: every position, weighted by the mask (static shapes under jit).
  per_row = flow_loss_per_row(model.head, tokens.reshape(b * n, d), z.reshape(b * n, -1), r_flow,
                              batch_mul=batch_mul)
  w = mask.reshape(-1).astype(jnp.float32)
  value = jnp.sum(per_row * w) / jnp.maximum(w.sum(), 1.0)
  return value, {"loss": value, "mask_ratio": mask.mean()}


def make_model(cfg: Mapping, *, rngs: nnx.Rngs) -> MAR:
  """A MAR from its constructor's fields plus `nn.options.COMMON` and `name`; any other key raises
  ValueError."""
  return MAR(**model_kwargs(cfg, FIELDS, model="mar", cls=MAR), rngs=rngs)
