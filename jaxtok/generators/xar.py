"""xAR: next-X prediction of continuous tokens by flow matching (Ren et al. 2025, "Beyond
Next-Token: Next-X Prediction for Autoregressive Visual Generation"; official code OliverRensu/xAR).

The token grid [B, N, D] is read as a sequence of entities (`generators.entities`: token, cell,
subsample, scale or image). One transformer, causal at entity granularity (`block_causal_mask`),
takes every entity's *noisy* tokens x_t = (1 - t) x + t eps (t = 1 noise, the `FlowHead`
convention) and outputs at each position the velocity eps - x of that position's own entity. As
in the release, the time enters through AdaLN: every position is modulated by class embedding +
time embedding of its entity's time (TimestepEmbedder: sinusoidal features of 1000 t -> Linear ->
SiLU -> Linear), and the tokens enter through a linear projection plus a learned position embedding.

Noisy Context Learning (training, `noisy_context=True`): each entity of each sample draws its own
time t_e ~ logit-normal (the release's sampler of t), so the context an entity sees is itself
noisy at independent levels; the loss is the mean squared velocity error over all positions. At
inference the context is the generated (clean) entities at t = 0 (`samplers.next_x`), which the
model has seen as the low-noise end of its training contexts.

KV cache (`init_cache`, `extend`; `samplers.next_x.sample_cached`): under the block-causal mask the
keys/values of generated entities depend only on those clean entities, so they are computed once
(one `extend` of each finished entity at t = 0) and every flow step of the next entity runs only its
own tokens against them, as the release's sampler does (`update_cache`); the context stays clean, as
there (no re-noising at inference).

`noisy_context=False` is the teacher-forcing ablation: one pass over [clean copy; noisy copy] of the
sequence with `teacher_forcing_mask` (noisy entity e sees the clean entities < e and itself), the
loss on the noisy copy only. With entity "token" this is next-token flow AR with a causal
transformer (tested against the sampler's single-sequence call).

Positions (`rope`; configs/xar_vae.py sets "2d", as released): the release rotates queries and keys of every block
(encoder and decoder) by 2D RoPE on the token grid, theta 10000, the first half of each head's
channels by the token's grid row and the second half by its column, E/4 frequencies theta^(-4i/E)
each (EVA-02's `VisionRotaryEmbeddingFast` with dim E/2), and keeps the learned absolute position
embedding added to the inputs; so does this model (`nn.rope.rope_2d` at `Layout.positions`: a
token's own (row, column) whatever entity holds it; the scale kind's coarse tokens sit at the
centres of the blocks they average). rope="none" is the previous model (learned embedding only)
and the constructor's default: RoPE has no parameters, so a checkpoint loads under either with
different numerics, and a stored config written before the option existed (no `rope` key) must
rebuild the model it trained.

Differences from the release: one `nn.Stack` of Llama-style blocks (RMSNorm, SwiGLU, AdaLN-zero)
stands in for its encoder + decoder pair of stacks (the same computation without the linear
between them); RoPE pairs channel i with i + E/4 inside each half (jaxtok's half-split layout)
where the release pairs neighbouring channels 2i, 2i + 1: the same rotation up to a fixed
permutation of the head's channels (q and k alike), i.e. of the qkv weights; the release's sampler
is `samplers.next_x` method "sde" (`samplers.flow_sde`), the default there stays the ODE's Euler.

Dimension names: B batch, N grid tokens, T sequence positions, E entities, D token dimension,
W width, C classes.
"""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxtok.generators import entities
from jaxtok.generators.grid import grid_shape
from jaxtok.generators.trunk import check_generator_args, drop_classes, swiglu_hidden
from jaxtok.nn.block import Block
from jaxtok.nn.dense import Dense
from jaxtok.nn.embeddings import timestep_embedding
from jaxtok.nn.norm import Norm
from jaxtok.nn.options import model_kwargs
from jaxtok.nn.stack import Stack
from jaxtok.sharding import logical_init

FIELDS = ("token_dim", "seq_len", "grid_width", "entity", "entity_size", "num_classes", "width",
          "depth", "heads", "mlp_ratio", "class_dropout", "noisy_context", "rope")
_INIT = nnx.initializers.normal(0.02)
_FREQ = 256  # the release's TimestepEmbedder frequency width
ROPES = ("2d", "none")


def logit_normal(rng: jax.Array, shape) -> jax.Array:
  """float32 times sigmoid(n), n ~ N(0, 1) (the release's `sample_logit_normal`)."""
  return jax.nn.sigmoid(jax.random.normal(rng, shape))


def entity_noise(rng: jax.Array, x: jax.Array, ids) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Noisy Context Learning's inputs for a clean sequence x [B, T, D] with entity ids [T] (0..E-1):
  (x_t, t [B, T], eps) with one logit-normal time per entity of each sample (so every entity, and
  thus every context, is noised at its own independent level) and x_t = (1 - t) x + t eps."""
  ids = np.asarray(ids)
  r_t, r_eps = jax.random.split(rng)
  t = logit_normal(r_t, (x.shape[0], int(ids.max()) + 1))[:, ids]
  eps = jax.random.normal(r_eps, x.shape)
  return (1 - t)[..., None] * x + t[..., None] * eps, t, eps


class XAR(nnx.Module):
  """Block-causal flow transformer over entities; `velocity` is the model, `loss` trains it."""

  def __init__(self, *, token_dim: int, seq_len: int, grid_width: int = 0, entity: str = "cell",
               entity_size: int = 2, num_classes: int = 0, width: int = 768, depth: int = 12,
               heads: int = 12, mlp_ratio: float = 4.0, class_dropout: float = 0.1,
               noisy_context: bool = True, rope: str = "none", dtype=jnp.float32,
               remat="none", scan_layers: bool = False, attention_impl=None, rngs: nnx.Rngs):
    check_generator_args(num_classes=num_classes, class_dropout=class_dropout, token_dim=token_dim)
    if rope not in ROPES:
      raise ValueError(f"rope must be one of {ROPES} ('2d': the release's grid RoPE), got {rope!r}")
    if rope == "2d" and (width % heads or (width // heads) % 4):
      raise ValueError(f"rope='2d' needs a head dim width / heads divisible by 4, got "
                       f"width={width}, heads={heads}")
    h, w = grid_shape(seq_len, grid_width)
    self.layout = entities.Layout(entity, h, w, entity_size)
    self.token_dim, self.seq_len, self.num_classes = token_dim, seq_len, num_classes
    self.class_dropout, self.noisy_context, self.dtype = class_dropout, bool(noisy_context), dtype
    self.rope = rope
    t = self.layout.length
    self.token_in = nnx.Linear(token_dim, width, kernel_init=logical_init(_INIT, None, "embed"),
                               rngs=rngs)
    self.pos_embedding = nnx.Param(logical_init(_INIT, None, "embed")(rngs.params(), (t, width)))
    self.class_embed = nnx.Embed(num_classes + 1, width,
                                 embedding_init=logical_init(_INIT, "vocab", "embed"), rngs=rngs)
    self.time_in = nnx.Linear(_FREQ, width, kernel_init=logical_init(_INIT, None, "embed"),
                              rngs=rngs)
    self.time_out = nnx.Linear(width, width, kernel_init=logical_init(_INIT, "embed", "mlp"),
                               rngs=rngs)
    self.blocks = Stack(depth, lambda r: Block(
        width, heads, mlp_hidden=swiglu_hidden(width, mlp_ratio), mlp="swiglu", mlp_bias=False,
        norm="rms", norm_eps=1e-6, adaln=True, qkv_bias=True, rope=self._rope_kind,
        implementation=attention_impl, qkv_init=_INIT, out_init=_INIT, mlp_init=_INIT, dtype=dtype,
        rngs=r),
        scan_layers=scan_layers, remat=remat, rngs=rngs)
    self.norm = Norm(width, kind="rms", eps=1e-6, dtype=dtype, rngs=rngs)
    self.out = Dense(width, token_dim, ("embed", None), dtype=dtype, kernel_init=_INIT, rngs=rngs)

  @property
  def null_id(self) -> int:
    return self.num_classes

  @property
  def entity_ids(self) -> np.ndarray:
    """int32 [T]: the entity of each sequence position."""
    return self.layout.ids

  def class_ids(self, labels, batch: int) -> jax.Array:
    """int32 [B]: labels, the null id where None / negative / unconditional model."""
    if labels is None or self.num_classes == 0:
      return jnp.full((batch,), self.null_id, jnp.int32)
    labels = jnp.asarray(labels, jnp.int32)
    return jnp.where(labels < 0, self.null_id, labels)

  def _embed(self, x_seq, t_seq, cls, pos):
    """Block inputs [B, T', W] and per-position AdaLN conditions [B, T', W] (compute dtype) of
    tokens [B, T', D] at times [B, T'] with position embeddings pos [T', W]."""
    b, n, _ = x_seq.shape
    x = self.token_in(x_seq.astype(jnp.float32)) + pos
    temb = timestep_embedding(t_seq.reshape(-1), _FREQ)
    temb = self.time_out(jax.nn.silu(self.time_in(temb))).reshape(b, n, -1)
    c = temb + self.class_embed(cls)[:, None]
    return x.astype(self.dtype), c.astype(self.dtype)

  def _head(self, h):
    return self.out(self.norm(h)).astype(jnp.float32)

  @property
  def _rope_kind(self) -> str | None:
    """The `nn.Attention` rope argument: "2d" or None."""
    return None if self.rope == "none" else self.rope

  @property
  def rope_positions(self) -> np.ndarray:
    """float32 [T, 2]: the 2D RoPE (row, column) of each sequence position (`Layout.positions`)."""
    return self.layout.positions

  def _features(self, x_seq, t_seq, cls, mask):
    """Velocity [B, T', D] float32 of inputs [B, T', D] at times [B, T'] under a [T', T'] mask
    (T' a multiple of T: the teacher-forcing pass repeats every position's embeddings)."""
    copies = x_seq.shape[1] // self.layout.length
    pos = jnp.concatenate([self.pos_embedding.get_value()] * copies, axis=0)
    x, c = self._embed(x_seq, t_seq, cls, pos)
    rope = (jnp.asarray(np.concatenate([self.rope_positions] * copies)) if self._rope_kind
            else None)
    return self._head(self.blocks(x, mask=jnp.asarray(mask), cond=c, positions=rope))

  def velocity(self, x_seq: jax.Array, t_seq: jax.Array, labels=None) -> jax.Array:
    """Velocity eps - x [B, T, D] float32 for the entity sequence x_seq [B, T, D] at per-position
    times t_seq [B, T] (t = 1 noise; a context entity generated already has t = 0); labels int32
    [B] (-1 = unconditional) or None. Block-causal: position p sees entities <= its own."""
    b, n, d = x_seq.shape
    if n != self.layout.length or d != self.token_dim:
      raise ValueError(f"x_seq must be [B, {self.layout.length}, {self.token_dim}], got "
                       f"{tuple(x_seq.shape)}")
    return self._features(x_seq, t_seq, self.class_ids(labels, b),
                          entities.block_causal_mask(self.entity_ids))

  def teacher_forced_velocity(self, clean: jax.Array, x_t: jax.Array, t_seq: jax.Array,
                              labels=None) -> jax.Array:
    """Velocity [B, T, D] at the noisy copy x_t [B, T, D] (times t_seq [B, T]) given the clean
    sequence [B, T, D] as context (t = 0): one pass with `teacher_forcing_mask`."""
    b = clean.shape[0]
    x = jnp.concatenate([clean, x_t], axis=1)
    t = jnp.concatenate([jnp.zeros_like(t_seq), t_seq], axis=1)
    out = self._features(x, t, self.class_ids(labels, b),
                         entities.teacher_forcing_mask(self.entity_ids))
    return out[:, self.layout.length:]

  def init_cache(self, batch: int):
    """Zeroed KV cache of every layer over the T sequence positions (k, v [batch, H, T, E] per
    layer, the compute dtype; an opaque pytree for `extend`)."""
    return self.blocks.init_cache(batch, self.layout.length)

  def extend(self, x: jax.Array, t: jax.Array, start, cache, labels=None):
    """One entity against the KV cache: (velocity float32 [B, L, D], new cache).

    x [B, L, D] are the tokens of sequence positions start..start+L-1 (one whole entity; start int,
    may be traced) at times t [B, L]; the cache holds the keys/values of positions < start (the
    clean context, written by earlier calls at t = 0). The entity's positions see those slots and
    each other, exactly the rows of `velocity`'s block-causal mask for this entity, so the result
    equals `velocity` on the whole sequence at these positions (tested). The returned cache also
    holds x's keys/values at start..start+L-1: keep it after a call on the clean entity at t = 0
    (the prefill of the context of later entities), drop it after a flow step.
    """
    b, n, d = x.shape
    if d != self.token_dim or n > self.layout.length:
      raise ValueError(f"x must be [B, L <= {self.layout.length}, {self.token_dim}], got "
                       f"{tuple(x.shape)}")
    pos = jax.lax.dynamic_slice_in_dim(self.pos_embedding.get_value(), start, n, axis=0)
    h, c = self._embed(x, t, self.class_ids(labels, b), pos)
    # Slots written so far: the context (< start) and this entity; later slots hold stale values.
    seen = (jnp.arange(self.layout.length) < start + n)[None, :]
    rope = (jax.lax.dynamic_slice_in_dim(jnp.asarray(self.rope_positions), start, n, axis=0)
            if self._rope_kind else None)
    h, cache = self.blocks.extend(h, cache, start, mask=seen, causal=False, cond=c, positions=rope)
    return self._head(h), cache

  def tokens_from_sequence(self, seq: jax.Array) -> jax.Array:
    """Entity sequence [B, T, D] -> grid tokens [B, N, D]."""
    return self.layout.from_sequence(seq)


def loss(model: XAR, tokens: jax.Array, labels, *, rng: jax.Array, train: bool = True,
         step=None):
  """Flow-matching loss of every entity at its own logit-normal time, and metrics {loss, mean_t}.

  tokens [B, N, D] float; labels int32 [B] (-1 = unconditional). `step` does not change the
  objective (part of the generator loss contract).
  """
  del step
  b, n, d = tokens.shape
  if n != model.seq_len or d != model.token_dim:
    raise ValueError(f"tokens must be [B, {model.seq_len}, {model.token_dim}], got "
                     f"{tuple(tokens.shape)}")
  r_noise, r_drop = jax.random.split(rng)
  x = model.layout.to_sequence(tokens.astype(jnp.float32))
  x_t, t, eps = entity_noise(r_noise, x, model.entity_ids)
  cls = drop_classes(model.class_ids(labels, b), null_id=model.null_id,
                     class_dropout=model.class_dropout, num_classes=model.num_classes,
                     train=train, rng=r_drop)
  if model.noisy_context:
    v = model.velocity(x_t, t, cls)
  else:
    v = model.teacher_forced_velocity(x, x_t, t, cls)
  value = jnp.mean((v - (eps - x)) ** 2)
  return value, {"loss": value, "mean_t": t.mean()}


def make_model(cfg: Mapping, *, rngs: nnx.Rngs) -> XAR:
  """An XAR from its constructor's fields plus `nn.options.COMMON` and `name`; any other key raises
  ValueError."""
  return XAR(**model_kwargs(cfg, FIELDS, model="xar", cls=XAR), rngs=rngs)
