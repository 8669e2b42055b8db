"""Any-subset autoregressive model (AS-ARM) over 1D tokens, sigma-GPT style: any order is a causal order.

The GPT's trunk (`trunk.TokenTrunk`, causal, RoPE over the slot index = how many tokens came before)
with two extra position tables: slot i of an order sigma (a permutation of the N positions) gets the
embedding of its input token x_sigma(i-1) (the condition id at slot 0), of that token's own position
sigma(i-1) (the extra index N at slot 0) and of the position it must predict, sigma(i). The output at
slot i is p(x_sigma(i) | x_sigma(0..i-1)), so a teacher-forced pass gives the whole chain of one order,
and `loss` trains uniformly random orders (sigma-GPT; every conditional p(x_j | x_S) is then trained).

`parallel_logits` gives p(x_j | x_C) for several next positions j at once from one pass: copies of
slot c (the last context token, RoPE position c) that each ask for a different target position and see
only the context and themselves. Its first query is exactly slot c of the chain (tested), which
`samplers.assd` relies on.

Id layout of the input embedding: GPT's ([0, K) tokens, K + c class c, K + C the null class).
Dimension names: B batch, N tokens (= seq_len), K codebook size, Q queries.
"""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtok.generators.gpt import GPT, cross_entropy
from jaxtok.generators.trunk import TOKEN_MODEL_FIELDS, ClassConditionalTokenModel
from jaxtok.nn.options import model_kwargs
from jaxtok.sharding import logical_init


class AnyOrderGPT(ClassConditionalTokenModel):
  """GPT's trunk and condition ids with own-position and target-position embeddings (fields:
  `GPT`'s). No left-to-right KV-cache interface: `chain_logits` and `parallel_logits` are its calls."""
  CAUSAL, EXTRA_IDS = True, 1
  null_id = GPT.null_id
  condition_ids = GPT.condition_ids
  training_condition_ids = GPT.training_condition_ids

  def __init__(self, *, rngs: nnx.Rngs, **fields):
    super().__init__(rngs=rngs, **fields)
    init = logical_init(nnx.initializers.normal(0.02), "vocab", "embed")
    width, dtype = self.net.embed.features, self.net.dtype
    self.own_pos = nnx.Embed(self.seq_len + 1, width, dtype=dtype, embedding_init=init, rngs=rngs)
    self.target_pos = nnx.Embed(self.seq_len, width, dtype=dtype, embedding_init=init, rngs=rngs)

  def _slots(self, cond, seq, order):
    """(input ids [B, N], own positions [B, N]) of the chain slots of seq [B, N] in order."""
    b, n = seq.shape
    if n != self.seq_len or tuple(order.shape) != (b, n):
      raise ValueError(f"seq and order must be [B, seq_len={self.seq_len}], got {tuple(seq.shape)} "
                       f"and {tuple(order.shape)}")
    ids = jnp.concatenate([cond[:, None], seq[:, :-1].astype(jnp.int32)], 1)
    own = jnp.concatenate([jnp.full((b, 1), n, jnp.int32), order[:, :-1].astype(jnp.int32)], 1)
    return ids, own

  def _embed(self, ids, own, target):
    return self.net.embed(ids) + self.own_pos(own) + self.target_pos(target)

  def chain_logits(self, seq, order, labels=None, *, train=False, rng=None):
    """Logits [B, N, K] float32: slot i gives p(x_order[i] | seq[:, :i]) for seq int32 [B, N] (the
    tokens in generation order) and order int32 [B, N] (a permutation of 0..N-1 per row)."""
    cond = self.training_condition_ids(labels, seq.shape[0], train=train, rng=rng)
    ids, own = self._slots(cond, seq, order)
    return self.net.forward_embedded(self._embed(ids, own, order))

  def __call__(self, tokens, labels=None, *, order, train=False, rng=None):
    """Chain logits [B, N, K] of tokens int32 [B, N] (position layout) in the given order."""
    seq = jnp.take_along_axis(tokens.astype(jnp.int32), order, 1)
    return self.chain_logits(seq, order, labels, train=train, rng=rng)

  def parallel_logits(self, seq, order, c, num_queries: int, labels=None):
    """Logits [B, Q, K] float32: query l gives p(x_order[c + l] | seq[:, :c]) (the first c tokens in
    order are the context; c int32 [B] in [0, N - 1]; queries past the end repeat the last position).
    One pass over N + Q slots: the chain slots, then Q copies of slot c."""
    b, n = seq.shape
    cond = self.condition_ids(labels, b)
    ids, own = self._slots(cond, seq, order)
    c = jnp.asarray(c, jnp.int32).reshape(b)
    at = lambda x: jnp.take_along_axis(x, c[:, None], 1)
    targets = jnp.take_along_axis(order, jnp.minimum(c[:, None] + jnp.arange(num_queries), n - 1), 1)
    x = jnp.concatenate([self._embed(ids, own, order),
                         self._embed(jnp.broadcast_to(at(ids), targets.shape),
                                     jnp.broadcast_to(at(own), targets.shape), targets)], 1)
    s = n + num_queries
    rows, cols = jnp.arange(s)[:, None], jnp.arange(s)[None, :]
    chain = (rows < n) & (cols <= rows)
    query = (rows >= n) & ((cols == rows) | (cols[None] < c[:, None, None]))
    mask = (chain | query)[:, None]  # [B, 1, S, S]
    positions = jnp.concatenate([jnp.broadcast_to(jnp.arange(n), (b, n)),
                                 jnp.broadcast_to(c[:, None], (b, num_queries))], 1)
    h = self.net.blocks(x.astype(self.net.dtype), mask=mask, positions=positions)
    return self.net.logits(h[:, n:])


def random_orders(rng, batch: int, length: int) -> jax.Array:
  """Uniformly random permutations int32 [B, N] of 0..N-1."""
  return jnp.argsort(jax.random.uniform(rng, (batch, length)), axis=1).astype(jnp.int32)


def loss(model: AnyOrderGPT, tokens, labels, *, rng, train: bool = True, step=None):
  """Cross-entropy of the chain of a uniformly random order per sample, and metrics {loss,
  accuracy}. `step` (part of the generator loss contract) does not change this objective."""
  del step
  r_order, r_drop = jax.random.split(rng)
  order = random_orders(r_order, *tokens.shape)
  seq = jnp.take_along_axis(tokens.astype(jnp.int32), order, 1)
  return cross_entropy(model.chain_logits(seq, order, labels, train=train, rng=r_drop), seq)


def make_model(cfg: Mapping, *, rngs: nnx.Rngs) -> AnyOrderGPT:
  """An AnyOrderGPT from GPT's config fields plus `nn.options.COMMON` and `name`; any other key raises
  ValueError."""
  return AnyOrderGPT(**model_kwargs(cfg, TOKEN_MODEL_FIELDS, model="any_order", cls=GPT), rngs=rngs)
