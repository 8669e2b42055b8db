"""GPT-style causal transformer over image tokens, class-conditional or unconditional, with a KV cache.

Id layout of the input embedding (one table, as 1d-tokenizer's generators do):
  [0, K)          image tokens (the tokenizer's codebook)
  K + c           class c, for c in [0, C)
  K + C           the null class: unconditional start token, and the guidance-free condition
The sequence fed to the network is [cond, t_0, ..., t_{N-2}] and the output at slot i predicts t_i,
so a sequence of N tokens costs N positions. Class dropout (replacing the class by the null id with
probability `class_dropout` in training) trains the unconditional model used by guidance.

Generation runs in jaxtok.samplers.autoregressive; this module gives it the two callables over a
preallocated cache (see `prefill` and `step`): the prompt [B, P] (usually just the condition id, P=1)
fills slots [0, P), then each new token t_i is written at slot i + 1. Any prefix length can be
generated, which is what FlexTok-style ordered tokens need.

Dimension names: B batch, N tokens, K codebook size, C classes.
"""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtok.generators.trunk import TOKEN_MODEL_FIELDS, ClassConditionalTokenModel, drop_classes
from jaxtok.nn.options import model_kwargs


class GPT(ClassConditionalTokenModel):
  """Causal token model. Fields are plain values (see the module docstring for the id layout)."""
  CAUSAL, EXTRA_IDS = True, 1

  @property
  def null_id(self) -> int:
    return self.codebook_size + self.num_classes

  def condition_ids(self, labels: jax.Array | None, batch: int) -> jax.Array:
    """Condition ids [B] int32: K + label, or the null id where labels is None or negative."""
    # An unconditional model (num_classes == 0) ignores labels.
    if labels is None or self.num_classes == 0:
      return jnp.full((batch,), self.null_id, jnp.int32)
    labels = jnp.asarray(labels, jnp.int32)
    return jnp.where(labels < 0, self.null_id, self.codebook_size + labels)

  def __call__(self, tokens: jax.Array, labels: jax.Array | None = None, *, train: bool = False,
               rng: jax.Array | None = None) -> jax.Array:
    """Teacher-forced logits [B, N, K] float32 for tokens [B, N] int32 (N <= seq_len)."""
    b, n = tokens.shape
    if n > self.seq_len:
      raise ValueError(f"tokens has {n} positions, more than seq_len={self.seq_len}")
    cond = self.training_condition_ids(labels, b, train=train, rng=rng)
    ids = jnp.concatenate([cond[:, None], tokens[:, :-1].astype(jnp.int32)], axis=1)
    return self.net(ids)

  def training_condition_ids(self, labels: jax.Array | None, batch: int, *, train: bool,
                             rng: jax.Array | None) -> jax.Array:
    """`condition_ids` [B] int32 with class dropout (`trunk.drop_classes`) when train=True."""
    return drop_classes(self.condition_ids(labels, batch), null_id=self.null_id,
                        class_dropout=self.class_dropout, num_classes=self.num_classes,
                        train=train, rng=rng)

  def init_cache(self, batch: int, dtype=None):
    """A cache with seq_len slots per layer (condition + N - 1 tokens)."""
    return self.net.init_cache(batch, self.seq_len, dtype)

  def prefill(self, prompt: jax.Array, cache):
    """Writes prompt ids [B, P] (condition id first) into slots [0, P).

    Returns (logits [B, K] predicting the token at sequence index P - 1, new cache).
    """
    logits, cache = self.net.extend(prompt.astype(jnp.int32), 0, cache)
    return logits[:, -1], cache

  def step(self, token: jax.Array, position, cache):
    """Writes token [B] (token t_{position-1}) at slot `position`; returns (logits [B, K] for
    t_position, new cache). `position` is an int32 scalar and may be traced."""
    logits, cache = self.net.extend(token[:, None].astype(jnp.int32), position, cache)
    return logits[:, 0], cache


def loss(model: GPT, tokens: jax.Array, labels: jax.Array | None, *, rng: jax.Array | None = None,
         train: bool = True, step=None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Next-token cross-entropy (mean over tokens) and metrics {loss, accuracy}. `step` (the
  training step, part of the generator loss contract) does not change this objective."""
  del step
  return cross_entropy(model(tokens, labels, train=train, rng=rng), tokens)


def cross_entropy(logits: jax.Array, tokens: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Mean cross-entropy of logits [B, N, K] against tokens [B, N] int32, and metrics {loss,
  accuracy} (the loss of every generator over discrete tokens here that predicts each token once)."""
  logp = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(logp, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]
  acc = jnp.mean((jnp.argmax(logits, -1) == tokens).astype(jnp.float32))
  value = jnp.mean(nll)
  return value, {"loss": value, "accuracy": acc}


def make_model(cfg: Mapping, *, rngs: nnx.Rngs) -> GPT:
  """A GPT from a config of the constructor's fields plus `nn.options.COMMON` (dtype, remat,
  scan_layers, attention_impl) and `name`; any other key raises ValueError."""
  return GPT(**model_kwargs(cfg, TOKEN_MODEL_FIELDS, model="gpt", cls=GPT), rngs=rngs)
