"""RAR: randomized autoregressive generation (Yu et al. 2024, bytedance/1d-tokenizer `modeling/rar.py`).

A causal, class-conditional transformer over image tokens that is trained on randomly permuted
token orders, the chance of a permutation annealed linearly from 1 to 0 (raster order after the
anneal), and samples in raster order with a KV cache. The layout is the released one, so that its
checkpoints load (`jaxtok.convert.rar`):

  sequence   [cls, cond, t_o0, t_o1, ..., t_o(N-2)]   (o = the order, a permutation of 0..N-1)
  x          = input embedding + pos_embed[slot] + target_aware[slot]
               pos_embed rows: 0 cls, 1 cond, 2 + o_j for the token t_oj (the position it sits at)
               target_aware at slot 1 + j: the table's row o_j, i.e. the position of the token the
               slot predicts (the cls slot gets none); this is what makes a random order learnable
  condition  c[slot] = class embedding + timesteps_embeddings[slot], a condition per position that
             adaLN-modulates every block (DiT-style, adaLN-zero) and the head
  blocks     pre-LN `nn.Block` (LayerNorm eps 1e-6, qkv bias, QK LayerNorm with scale and bias eps
             1e-6, exact GELU MLP), causal over the whole sequence
  head       LayerNorm without affine, modulated by (scale, shift) = Dense(silu(c)) (the reverse of
             DiT's chunk order, as released), then lm_head; the output at slot 1 + j predicts t_oj.
Id layout of the input embedding (the released one): image tokens [0, K), K unused (MaskGIT's mask
id in the shared table), class c at K + 1 + c, the null class at K + 1 + C.

Dropout as the released training config (`dropout` 0.1 on the attention output projection and the
MLP's hidden activation and output, timm's proj_drop / Mlp drop; `attn_dropout` 0.1 on the attention
probabilities): active only in training passes (train=True with rng), through the shared Block's
dropout; class dropout for guidance as released.

Generation: `init_cache` / `prefill` / `step` follow `samplers.autoregressive`'s contract (as
`generators.gpt.GPT`), in raster order as the release samples; the cache carries the condition
embedding beside the keys and values because every position is modulated by it.

Dimension names: B batch, N tokens (seq_len), K codebook size, C classes, W width, S cache slots.
"""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxtok.generators.trunk import drop_classes
from jaxtok.nn.block import Block
from jaxtok.nn.dense import Dense
from jaxtok.nn.embeddings import LearnedEmbedding, trunc_normal
from jaxtok.nn.norm import Norm
from jaxtok.nn.options import model_kwargs
from jaxtok.nn.stack import Stack

# Slots before the first image token: the cls token and the condition.
PREFIX = 2


def random_order_probability(step, anneal_start: int, anneal_end: int) -> jax.Array:
  """The chance float32 [] that a training sample gets a random order at `step` (may be traced).

  1 before anneal_start, 1 - (step - start) / (end - start) inside, 0 after anneal_end
  (1d-tokenizer `get_rar_random_ratio`; `step` counts completed updates, its `global_step`). With
  anneal_start == anneal_end the switch is a step: 1 up to that step, 0 after it (as 1 at the start
  and 0 after the end of a longer anneal).
  """
  step = jnp.asarray(step, jnp.float32)
  span = max(anneal_end - anneal_start, 1)
  return jnp.clip(1.0 - (step - anneal_start) / span, 0.0, 1.0)


def sample_orders(rng: jax.Array, batch: int, length: int, probability) -> jax.Array:
  """Token orders int32 [B, N]: a uniform random permutation with `probability`, else 0..N-1."""
  r_use, r_perm = jax.random.split(rng)
  use = jax.random.uniform(r_use, (batch,)) < probability
  perms = jnp.argsort(jax.random.uniform(r_perm, (batch, length)), axis=1).astype(jnp.int32)
  return jnp.where(use[:, None], perms, jnp.arange(length, dtype=jnp.int32)[None])


def _check_orders(orders: jax.Array, batch: int, length: int) -> None:
  """ValueError unless orders is [B, N] and (when concrete) each row a permutation of 0..N-1: a
  repeated position would silently train on a wrong target."""
  if tuple(orders.shape) != (batch, length):
    raise ValueError(f"orders must have the tokens' shape {(batch, length)}, got "
                     f"{tuple(orders.shape)}")
  if isinstance(orders, jax.core.Tracer):
    return
  o = np.asarray(orders)
  bad = np.nonzero((np.sort(o, axis=1) != np.arange(length)).any(axis=1))[0]
  if bad.size:
    raise ValueError(f"orders must be a permutation of 0..{length - 1} per sample, got row "
                     f"{bad[0]}: {o[bad[0]].tolist()}")


class RAR(nnx.Module):
  """Tokens [B, N] (+ labels [B], an order [B, N]) -> logits [B, N, K] float32 (see module doc).

  Args:
    codebook_size, seq_len, num_classes: K, N, C.
    width, depth, heads, mlp_ratio: transformer shape (released: 16 heads, MLP 4 W).
    class_dropout: chance of the null class per sample in training (guidance).
    dropout, attn_dropout: the blocks' dropout rates in training (`nn.block.Block`; released 0.1).
    anneal_start, anneal_end: training steps between which the random-order chance falls
      linearly from 1 to 0 (released: 125k and 187.5k of 250k).
    dtype, remat, scan_layers, attention_impl: `nn.options.COMMON`.
  """

  def __init__(self, *, codebook_size: int, seq_len: int, num_classes: int = 1000,
               width: int = 768, depth: int = 24, heads: int = 16, mlp_ratio: float = 4.0,
               class_dropout: float = 0.1, anneal_start: int = 125_000, anneal_end: int = 187_500,
               dropout: float = 0.0, attn_dropout: float = 0.0, dtype=jnp.float32, remat="none", scan_layers: bool = False, attention_impl=None,
               rngs: nnx.Rngs):
    if codebook_size < 2 or seq_len < 1 or num_classes < 0:
      raise ValueError(f"need codebook_size >= 2, seq_len >= 1, num_classes >= 0, got "
                       f"{codebook_size}, {seq_len}, {num_classes}")
    if not 0.0 <= class_dropout < 1.0:
      raise ValueError(f"class_dropout must be in [0, 1), got {class_dropout}")
    if not 0 <= anneal_start <= anneal_end:
      raise ValueError(f"need 0 <= anneal_start <= anneal_end, got anneal_start={anneal_start}, "
                       f"anneal_end={anneal_end}")
    self.codebook_size, self.seq_len, self.num_classes = codebook_size, seq_len, num_classes
    self.class_dropout, self.anneal_start, self.anneal_end = class_dropout, anneal_start, anneal_end
    self.width, self.dtype = width, dtype
    init = trunc_normal(0.02)
    self.embeddings = LearnedEmbedding(codebook_size + num_classes + 2, width, init=init, rngs=rngs)
    self.cls_token = LearnedEmbedding(1, width, init=nnx.initializers.zeros, rngs=rngs)
    # The releases hold seq_len + 1024 (+ 100) rows; only these are ever read (the converter slices).
    self.pos_embed = LearnedEmbedding(PREFIX + seq_len, width, init=init, rngs=rngs)
    self.target_aware_pos_embed = LearnedEmbedding(seq_len, width, init=init, rngs=rngs)
    self.timesteps_embeddings = LearnedEmbedding(PREFIX + seq_len, width, init=init, rngs=rngs)
    self.blocks = Stack(depth, lambda r: Block(
        width, heads, mlp_hidden=int(width * mlp_ratio), norm_eps=1e-6, adaln=True,
        qk_norm="layer", qk_norm_affine=True, qk_norm_bias=True, qk_norm_eps=1e-6, qkv_init=init,
        out_init=init, mlp_init=init, implementation=attention_impl, dropout=dropout,
        attn_dropout=attn_dropout, dtype=dtype, rngs=r),
        scan_layers=scan_layers, remat=remat, rngs=rngs)
    self.head_norm = Norm(width, eps=1e-6, affine=False, dtype=dtype, rngs=rngs)
    self.head_ada = Dense(width, 2 * width, ("embed", "mlp"), kernel_init=nnx.initializers.zeros,
                          dtype=dtype, rngs=rngs)
    self.lm_head = Dense(width, codebook_size, ("embed", "vocab"), dtype=dtype, rngs=rngs)

  @property
  def null_id(self) -> int:
    return self.codebook_size + 1 + self.num_classes

  def condition_ids(self, labels: jax.Array | None, batch: int) -> jax.Array:
    """Condition ids [B] int32: K + 1 + label, or the null id where labels is None or negative."""
    if labels is None or self.num_classes == 0:
      return jnp.full((batch,), self.null_id, jnp.int32)
    labels = jnp.asarray(labels, jnp.int32)
    return jnp.where(labels < 0, self.null_id, self.codebook_size + 1 + labels)

  def _prefix(self, cond_emb: jax.Array, first: jax.Array) -> jax.Array:
    """The [cls, condition] slots [B, 2, W] float32 for class embeddings cond_emb [B, W], the
    condition slot carrying the target-aware row of `first` [B] (the position it predicts)."""
    pos = self.pos_embed()
    cls = jnp.broadcast_to(self.cls_token()[0] + pos[0], cond_emb.shape)
    return jnp.stack([cls, cond_emb + pos[1] + self.target_aware_pos_embed()[first]], axis=1)

  def _head(self, x: jax.Array, c: jax.Array | None, ada: jax.Array | None = None) -> jax.Array:
    """Logits [B, T, K] float32 from hidden states x and conditions c [B, T, W] (or their head
    modulation ada = head_ada(silu(c)) [B, T, 2W], computed beforehand)."""
    scale, shift = jnp.split(self.head_ada(jax.nn.silu(c)) if ada is None else ada, 2, axis=-1)
    return self.lm_head(self.head_norm(x) * (1 + scale) + shift).astype(jnp.float32)

  def __call__(self, tokens: jax.Array, labels: jax.Array | None = None, *,
               orders: jax.Array | None = None, train: bool = False,
               rng: jax.Array | None = None) -> jax.Array:
    """Teacher-forced logits [B, N, K] float32 for tokens [B, N] int32 in the order `orders` [B, N]
    (a permutation of 0..N-1 per sample; None = raster): logits[:, j] predicts tokens[:, orders[:, j]].
    train=True with class_dropout > 0 needs rng (the null class replaces the label at random); with
    rng, train=True also applies the blocks' dropout (key fold_in(rng, 1))."""
    b, n = tokens.shape
    if n != self.seq_len:
      raise ValueError(f"tokens must be [B, seq_len={self.seq_len}], got {tuple(tokens.shape)}")
    if orders is None:
      orders = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (b, n))
    else:
      _check_orders(orders, b, n)
    cond = drop_classes(self.condition_ids(labels, b), null_id=self.null_id,
                        class_dropout=self.class_dropout, num_classes=self.num_classes,
                        train=train, rng=rng)
    table, pos, ta = self.embeddings(), self.pos_embed(), self.target_aware_pos_embed()
    cond_emb = table[cond]
    shuffled = jnp.take_along_axis(tokens.astype(jnp.int32), orders, axis=1)
    # The last token predicts nothing, so it is not fed: N + 1 slots give the N predictions.
    x = jnp.concatenate([
        self._prefix(cond_emb, orders[:, 0]),
        table[shuffled[:, :-1]] + pos[PREFIX + orders[:, :-1]] + ta[orders[:, 1:]]], axis=1)
    c = cond_emb[:, None] + self.timesteps_embeddings(n + 1)[None]
    drop = jax.random.fold_in(rng, 1) if train and rng is not None else None
    x = self.blocks(x.astype(self.dtype), causal=True, cond=c.astype(self.dtype), dropout_rng=drop)
    return self._head(x[:, 1:], c[:, 1:].astype(self.dtype))

  # ---- generation (samplers.autoregressive contract, raster order) ----

  def init_cache(self, batch: int, dtype=None) -> dict:
    """{"kv": keys/values of N + 1 slots (cls, condition, N - 1 tokens), "cond": [B, W] float32}."""
    return {"kv": self.blocks.init_cache(batch, self.seq_len + 1, dtype),
            "cond": jnp.zeros((batch, self.width), jnp.float32)}

  def _extend(self, x, slots, cache):
    """Runs x [B, T, W] at cache slots `slots` [T] (consecutive); logits [B, T, K], new cache."""
    c = (cache["cond"][:, None] + self.timesteps_embeddings()[slots][None]).astype(self.dtype)
    x, kv = self.blocks.extend(x.astype(self.dtype), cache["kv"], slots[0], cond=c)
    return self._head(x, c), dict(cache, kv=kv)

  def prefill(self, prompt: jax.Array, cache: dict):
    """Writes [cls, condition] for prompt ids [B, 1] (the condition id) into slots 0 and 1.

    Returns (logits [B, K] for the first token, new cache).
    """
    if prompt.ndim != 2 or prompt.shape[1] != 1:
      raise ValueError(f"prompt must be the condition ids [B, 1], got {tuple(prompt.shape)}")
    cond_emb = self.embeddings()[prompt[:, 0].astype(jnp.int32)]
    x = self._prefix(cond_emb, jnp.zeros(prompt.shape[:1], jnp.int32))
    logits, cache = self._extend(x, jnp.arange(PREFIX), dict(cache, cond=cond_emb))
    return logits[:, -1], cache

  def prepare_segment(self, cache: dict, first: int, stop: int) -> dict:
    """The AdaLN modulations of every block and of the head for the steps at positions
    [first, stop) (static ints), computed at once (`samplers.autoregressive.sample(segment=,
    segment_fn=)`): they depend only on the condition and the slot, not on the sampled tokens, and
    one [B * S, W] x [W, 6W] product per block runs at several times the speed of S products of B
    rows. `step` then reads them instead of computing its own (same values up to the rounding of
    the larger product). A scanned stack keeps the per-step path (the cache is returned as is)."""
    if self.blocks.scan_layers:
      return cache
    slots = PREFIX - 1 + jnp.arange(first, stop)  # the step at position p writes slot p + 1
    c = (cache["cond"][:, None] + self.timesteps_embeddings()[slots][None]).astype(self.dtype)
    mods = tuple(jnp.stack(block.modulation(c, None, c.shape[1])) for block in self.blocks.blocks)
    return dict(cache, mods=mods, head_mods=self.head_ada(jax.nn.silu(c)),
                mods_first=jnp.int32(first))

  def step(self, token: jax.Array, position, cache: dict):
    """Writes token [B] (token t_{position-1}, raster order) at slot position + 1; returns (logits
    [B, K] for t_position, new cache). `position` is an int32 scalar and may be traced."""
    j = jnp.asarray(position, jnp.int32) - 1  # the token's index in the image
    # The target-aware row of the next token; the last token predicts nothing (a zero row).
    ta = jnp.concatenate([self.target_aware_pos_embed(), jnp.zeros((1, self.width))])
    x = self.embeddings()[token.astype(jnp.int32)] + self.pos_embed()[PREFIX + j] + ta[j + 1]
    if "mods" not in cache:
      logits, cache = self._extend(x[:, None], PREFIX + j + jnp.arange(1), cache)
      return logits[:, 0], cache
    # prepare_segment's modulations of this position ([6 or 1, B, S, *] -> [.., B, 1, *]).
    pick = lambda m: jax.lax.dynamic_slice_in_dim(m, position - cache["mods_first"], 1, axis=-2)
    x, kvs = x[:, None].astype(self.dtype), []
    for block, mods, kv in zip(self.blocks.blocks, cache["mods"], cache["kv"]):
      x, kv = block.extend(x, kv, PREFIX + j, modulation=list(pick(mods)))
      kvs.append(kv)
    return self._head(x, None, pick(cache["head_mods"]))[:, 0], dict(cache, kv=tuple(kvs))


def loss(model: RAR, tokens: jax.Array, labels, *, rng: jax.Array, train: bool = True,
         step=None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Next-token cross-entropy in the sampled orders (mean over tokens) and metrics {loss,
  accuracy, random_order_probability}.

  train=True draws each sample's order (random with `random_order_probability(step, ...)`, the
  training step number `step` being required) and drops classes; train=False is raster order.
  """
  b, n = tokens.shape
  r_order, r_drop = jax.random.split(rng)
  if train:
    if step is None:
      raise ValueError("RAR's training loss needs step (the random-order chance is annealed)")
    p = random_order_probability(step, model.anneal_start, model.anneal_end)
  else:
    p = jnp.float32(0.0)
  orders = sample_orders(r_order, b, n, p)
  logits = model(tokens, labels, orders=orders, train=train, rng=r_drop)
  targets = jnp.take_along_axis(tokens.astype(jnp.int32), orders, axis=1)
  logp = jax.nn.log_softmax(logits, axis=-1)
  value = -jnp.mean(jnp.take_along_axis(logp, targets[..., None], axis=-1))
  acc = jnp.mean((jnp.argmax(logits, -1) == targets).astype(jnp.float32))
  return value, {"loss": value, "accuracy": acc, "random_order_probability": p}


FIELDS = ("codebook_size", "seq_len", "num_classes", "width", "depth", "heads", "mlp_ratio",
          "class_dropout", "anneal_start", "anneal_end", "dropout", "attn_dropout")


def make_model(cfg: Mapping, *, rngs: nnx.Rngs) -> RAR:
  """A RAR from its constructor's fields plus `nn.options.COMMON` and `name`; any other key raises
  ValueError naming the valid ones."""
  return RAR(**model_kwargs(cfg, FIELDS, model="rar", cls=RAR), rngs=rngs)
