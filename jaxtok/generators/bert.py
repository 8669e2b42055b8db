"""Bidirectional token transformer for MaskGIT-style parallel decoding, with an explicit mask id.

Id layout of the input embedding:
  [0, K)        image tokens
  K             the mask token (`mask_id`, explicit: never -1 and never a wrap-around index)
  K + 1 + c     class c, for c in [0, C)
  K + 1 + C     the null class (unconditional / guidance-free condition)
The class id is prepended to the sequence and its output dropped, so logits are [B, N, K]: the mask id
can never be predicted.

Training (`loss`) masks a random number of positions per sample following the MaskGIT schedule:
r = schedule(u) with u ~ U(0, 1) (arccos by default, as 1d-tokenizer's TiTok generator), n = max(1,
round(N r)) positions chosen uniformly without replacement, and cross-entropy with label smoothing on
the masked positions (unmasked positions weighted by `unmasked_weight`, normalised by the weight sum,
as 1d-tokenizer does).

Dimension names: B batch, N tokens, K codebook size, C classes.
"""
from __future__ import annotations

import math
from typing import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtok.generators.trunk import TOKEN_MODEL_FIELDS, ClassConditionalTokenModel, drop_classes
from jaxtok.nn.options import model_kwargs


class MaskGITTransformer(ClassConditionalTokenModel):
  """Bidirectional token model (see the module docstring for the id layout)."""
  CAUSAL, EXTRA_IDS = False, 2

  @property
  def mask_id(self) -> int:
    return self.codebook_size

  @property
  def null_id(self) -> int:
    return self.codebook_size + 1 + self.num_classes

  def condition_ids(self, labels, batch: int) -> jax.Array:
    # An unconditional model (num_classes == 0) ignores labels.
    if labels is None or self.num_classes == 0:
      return jnp.full((batch,), self.null_id, jnp.int32)
    labels = jnp.asarray(labels, jnp.int32)
    return jnp.where(labels < 0, self.null_id, self.codebook_size + 1 + labels)

  def __call__(self, tokens: jax.Array, labels=None, *, train: bool = False, rng=None) -> jax.Array:
    """Logits [B, N, K] float32 for tokens [B, N] int32 in [0, K] (K = mask id)."""
    return self.net(self.input_ids(tokens, labels, train=train, rng=rng))[:, 1:]

  def input_ids(self, tokens: jax.Array, labels=None, *, train: bool = False, rng=None) -> jax.Array:
    """[condition id, tokens] int32 [B, 1 + N], with class dropout when train=True."""
    b, n = tokens.shape
    if n != self.seq_len:
      raise ValueError(f"tokens must have seq_len={self.seq_len} positions, got {n}")
    cond = drop_classes(self.condition_ids(labels, b), null_id=self.null_id,
                        class_dropout=self.class_dropout, num_classes=self.num_classes,
                        train=train, rng=rng)
    return jnp.concatenate([cond[:, None], tokens.astype(jnp.int32)], axis=1)

  # ---- ReCAP (jaxtok.samplers.recap): a full pass that keeps every layer's keys/values, and a
  # cheap pass of a few positions against them ----

  def logits_and_cache(self, tokens: jax.Array, labels=None, *, extra_slots: int):
    """`__call__`'s logits [B, N, K] and a KV cache of 1 + N + extra_slots slots (condition, tokens,
    then room for `cached_logits`' queries) holding every layer's keys/values of this pass."""
    ids = self.input_ids(tokens, labels)
    b, s = ids.shape
    cache = self.net.blocks.init_cache(b, s + extra_slots)
    visible = (jnp.arange(s + extra_slots) < s)[None, None, None, :]  # the unwritten slots hidden
    h, cache = self.net.extend_features(self.net.embed(ids), 0, cache, mask=visible, causal=False)
    return self.net.logits(h)[:, 1:], cache

  def cached_logits(self, tokens: jax.Array, positions: jax.Array, cache) -> jax.Array:
    """Logits [B, Q, K] of tokens int32 [B, Q] (ids or the mask id) at token positions int32 [B, Q]
    (distinct, in [0, N)), attending to themselves and to the cache's keys/values of every other
    slot (the condition and the tokens at other positions, as the full pass left them)."""
    b, q = tokens.shape
    n = self.seq_len
    slots = self.blocks_cache_slots(cache)
    stale = jnp.zeros((b, slots), bool).at[jnp.arange(b)[:, None], 1 + positions].set(True)
    col = jnp.arange(slots)[None, :]
    visible = ((col <= n) & ~stale) | ((col > n) & (col <= n + q))  # [B, S]
    h, _ = self.net.extend_features(self.net.embed(tokens.astype(jnp.int32)), n + 1, cache,
                                    mask=visible[:, None, None, :], positions=1 + positions,
                                    causal=False)
    return self.net.logits(h)

  @staticmethod
  def blocks_cache_slots(cache) -> int:
    """Number of slots of a cache made by `logits_and_cache`."""
    return jax.tree.leaves(cache)[0].shape[-2]


def arccos_schedule(u: jax.Array) -> jax.Array:
  """MaskGIT arccos mask ratio arccos(u) / (pi / 2), clipped to [1e-6, 1]."""
  return jnp.clip(jnp.arccos(u) / (math.pi / 2), 1e-6, 1.0)


def random_mask(rng: jax.Array, batch: int, length: int, schedule=arccos_schedule) -> jax.Array:
  """Training mask [B, N] bool: per sample n = max(1, round(N * schedule(u))) positions, u ~ U(0,1)."""
  ru, rp = jax.random.split(rng)
  ratio = schedule(jax.random.uniform(ru, (batch,)))
  count = jnp.maximum(1, jnp.round(length * ratio)).astype(jnp.int32)
  ranks = jnp.argsort(jnp.argsort(jax.random.uniform(rp, (batch, length)), axis=1), axis=1)
  return ranks < count[:, None]


def loss(model: MaskGITTransformer, tokens: jax.Array, labels, *, rng: jax.Array,
         label_smoothing: float = 0.1, unmasked_weight: float = 0.1, train: bool = True,
         step=None):
  """Masked-token cross-entropy and metrics {loss, masked_accuracy, mask_ratio}. `step` (the
  training step, part of the generator loss contract) does not change this objective."""
  del step
  r_mask, r_drop = jax.random.split(rng)
  b, n = tokens.shape
  mask = random_mask(r_mask, b, n)
  inputs = jnp.where(mask, model.mask_id, tokens)
  logits = model(inputs, labels, train=train, rng=r_drop)
  return masked_ce(logits, tokens, mask, model.codebook_size, label_smoothing, unmasked_weight)


def masked_ce(logits: jax.Array, tokens: jax.Array, mask: jax.Array, k: int,
              label_smoothing: float, unmasked_weight: float):
  """(loss, {loss, masked_accuracy, mask_ratio}): cross-entropy of logits [B, N, K] against tokens
  [B, N] with label smoothing, weight 1 on masked positions and unmasked_weight elsewhere,
  normalised by the weight sum (1d-tokenizer's MLMLoss)."""
  target = jax.nn.one_hot(tokens, k) * (1 - label_smoothing) + label_smoothing / k
  ce = -jnp.sum(target * jax.nn.log_softmax(logits, -1), axis=-1)
  w = jnp.where(mask, 1.0, unmasked_weight)
  value = jnp.sum(ce * w) / jnp.sum(w)
  correct = (jnp.argmax(logits, -1) == tokens) & mask
  return value, {"loss": value, "masked_accuracy": correct.sum() / mask.sum(),
                 "mask_ratio": mask.mean()}


def make_model(cfg: Mapping, *, rngs: nnx.Rngs) -> MaskGITTransformer:
  """A MaskGITTransformer from its constructor's fields plus `nn.options.COMMON` and `name`; any other
  key raises ValueError."""
  return MaskGITTransformer(**model_kwargs(cfg, TOKEN_MODEL_FIELDS, model="maskgit",
                                                 cls=MaskGITTransformer), rngs=rngs)
