"""The token trunk of jaxtok's own generators: embedding -> `nn.Stack` of Llama blocks -> RMSNorm -> head.

A composition of the shared parts in the LlamaGen/Llama layout used by modern image AR models:
bias-free projections, pre-norm RMSNorm (eps 1e-6), SwiGLU MLP (hidden 2/3 of mlp_ratio * width,
rounded up to a multiple of 8), rotary positions on queries and keys (1D; 2D grid positions with
rope="2d", NAR's), N(0, 0.02) weights. It is causal for GPT-style models and bidirectional for
MaskGIT/MAR-style ones. Causal trunks also run
incrementally against a preallocated KV cache (`init_cache`, `extend`), giving exactly the logits of
a full recompute (tested).

Dimension names: B batch, T sequence, W width.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtok import sharding
from jaxtok.nn.block import Block
from jaxtok.nn.dense import Dense
from jaxtok.nn.norm import Norm
from jaxtok.nn.stack import Stack
from jaxtok.sharding import logical_init

_INIT = nnx.initializers.normal(0.02)


def swiglu_hidden(width: int, mlp_ratio: float) -> int:
  """Llama's SwiGLU hidden size: int(2/3 * mlp_ratio * width) rounded up to a multiple of 8."""
  return 8 * ((int(2 * mlp_ratio * width / 3) + 7) // 8)




def class_condition(labels: jax.Array | None, batch: int, *, null_id: int, num_classes: int,
                    class_dropout: float, train: bool, rng: jax.Array | None) -> jax.Array:
  """Class ids int32 [B] of generators whose class i is id i and null is `null_id`: labels < 0 (or an
  unconditional model, or labels None) give the null id; class dropout when training (`drop_classes`)."""
  if labels is None or num_classes == 0:
    return jnp.full((batch,), null_id, jnp.int32)
  labels = jnp.asarray(labels, jnp.int32)
  return drop_classes(jnp.where(labels < 0, null_id, labels), null_id=null_id,
                      class_dropout=class_dropout, num_classes=num_classes, train=train, rng=rng)

def check_generator_args(*, num_classes: int = 0, class_dropout: float = 0.0, **at_least_one: int) -> None:
  """The generators' shared constructor checks: ValueError naming the argument unless every keyword
  in `at_least_one` is >= 1, num_classes >= 0 and class_dropout lies in [0, 1)."""
  for name, value in at_least_one.items():
    if value < 1:
      raise ValueError(f"{name} must be >= 1, got {value}")
  if num_classes < 0:
    raise ValueError(f"num_classes must be >= 0, got {num_classes}")
  if not 0.0 <= class_dropout < 1.0:
    raise ValueError(f"class_dropout must be in [0, 1), got {class_dropout}")

class TokenTrunk(nnx.Module):
  """Token ids (or embedded inputs) -> logits, with a KV cache when causal.

  Args:
    input_vocab: rows of the input embedding table (codebook + special ids such as mask/class ids).
    output_vocab: logits per position (the codebook size, or a condition width for MAR).
    width, depth, heads, mlp_ratio: transformer shape.
    causal: GPT-style causal mask (True) or bidirectional (False).
    rope: "1d" (positions 0..T-1 by default) or "2d" (then every call passes positions [T, 2]).
    dtype: compute dtype (parameters float32; attention softmax and norms in float32).
    remat, scan_layers, attention_impl: see `nn.stack` / `nn.attention`.
  """

  def __init__(self, *, input_vocab: int, output_vocab: int, width: int, depth: int, heads: int,
               mlp_ratio: float = 4.0, causal: bool = True, dtype=jnp.float32, remat="none",
               scan_layers: bool = False, attention_impl=None, rope: str = "1d", rngs: nnx.Rngs):
    self.causal, self.dtype, self.output_vocab = causal, dtype, output_vocab
    self.embed = nnx.Embed(input_vocab, width, dtype=dtype,
                           embedding_init=logical_init(_INIT, "vocab", "embed"), rngs=rngs)
    hidden = swiglu_hidden(width, mlp_ratio)
    self.blocks = Stack(depth, lambda r: Block(
        width, heads, mlp_hidden=hidden, mlp="swiglu", mlp_bias=False, norm="rms", norm_eps=1e-6,
        qkv_bias=False, out_bias=False, rope=rope, implementation=attention_impl, qkv_init=_INIT,
        out_init=_INIT, mlp_init=_INIT, dtype=dtype, rngs=r),
        scan_layers=scan_layers, remat=remat, rngs=rngs)
    self.norm = Norm(width, kind="rms", eps=1e-6, dtype=dtype, rngs=rngs)
    self.head = Dense(width, output_vocab, ("embed", "vocab"), use_bias=False, dtype=dtype,
                      kernel_init=_INIT, rngs=rngs)

  def logits(self, h: jax.Array) -> jax.Array:
    """Logits [B, T, output_vocab] float32 of transformer features h [B, T, W] (norm, then head)."""
    logits = self.head(self.norm(h)).astype(jnp.float32)
    return sharding.constrain(logits, ("act_batch", "act_seq", "act_vocab"))

  def __call__(self, ids: jax.Array) -> jax.Array:
    """Logits [B, T, output_vocab] float32 for input ids [B, T] int32."""
    return self.forward_embedded(self.embed(ids))

  def features(self, x: jax.Array, *, mask: jax.Array | None = None,
               positions: jax.Array | None = None) -> jax.Array:
    """Transformer features [B, T, W] (before the final norm) of embedded inputs x [B, T, W].

    mask: None (the trunk's own causal / bidirectional rule) or a boolean [T, T] (or broadcastable
    to [B, H, T, T]) mask that replaces it (True = may attend), e.g. NAR's near-causal mask.
    positions: RoPE positions ([T] for 1D, default 0..T-1; [T, 2] for 2D, required).
    """
    x = x.astype(self.dtype)
    if mask is None:
      return self.blocks(x, causal=self.causal, positions=positions)
    return self.blocks(x, mask=mask, positions=positions)

  def forward_embedded(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
    """Logits [B, T, output_vocab] float32 for already-embedded inputs x [B, T, W] (mask: see
    `features`)."""
    return self.logits(self.features(x, mask=mask))

  def init_cache(self, batch: int, length: int, dtype=None):
    """Zeroed caches of `length` slots (an opaque pytree for `extend`)."""
    if not self.causal:
      raise ValueError("init_cache needs a causal transformer; this one is bidirectional")
    return self.blocks.init_cache(batch, length, dtype)

  def extend(self, ids: jax.Array, start, cache):
    """Runs ids [B, T] at positions start..start+T-1 against the cache; `start` may be traced.

    Returns (logits [B, T, output_vocab] float32, new cache).
    """
    return self.extend_embedded(self.embed(ids), start, cache)

  def extend_features(self, x: jax.Array, start, cache, **kwargs):
    """Features [B, T, W] (before the final norm) of embedded x [B, T, W] written at cache slots
    start..start+T-1, and the new cache; kwargs (mask, positions, causal) go to `Attention.extend`."""
    return self.blocks.extend(x.astype(self.dtype), cache, start, **kwargs)

  def extend_embedded(self, x: jax.Array, start, cache):
    """`extend` for already-embedded inputs x [B, T, W]."""
    x, cache = self.extend_features(x, start, cache)
    return self.logits(x), cache


def drop_classes(cond: jax.Array, *, null_id: int, class_dropout: float, num_classes: int,
                 train: bool, rng: jax.Array | None) -> jax.Array:
  """Condition ids [B] int32 with each replaced by `null_id` with chance class_dropout when training
  a class-conditional model (the unconditional model that guidance needs); unchanged otherwise.

  Raises:
    ValueError: train=True with class_dropout > 0 and rng None.
  """
  if not (train and class_dropout > 0 and num_classes > 0):
    return cond
  if rng is None:
    raise ValueError("train=True with class_dropout > 0 needs rng")
  return jnp.where(jax.random.bernoulli(rng, class_dropout, cond.shape), null_id, cond)


# Config fields of the class-conditional token models (GPT, MaskGIT).
TOKEN_MODEL_FIELDS = ("codebook_size", "seq_len", "num_classes", "width", "depth", "heads",
                      "mlp_ratio", "class_dropout")


class ClassConditionalTokenModel(nnx.Module):
  """Shared constructor of GPT and MaskGIT: an input vocabulary of K codes, C class ids and the
  subclass's `EXTRA_IDS` special ids (each model's docstring gives the id layout); `CAUSAL` picks
  the attention mask.
  """
  CAUSAL = True
  EXTRA_IDS = 1

  def __init__(self, *, codebook_size: int, seq_len: int, num_classes: int = 0, width: int = 768,
               depth: int = 12, heads: int = 12, mlp_ratio: float = 4.0, class_dropout: float = 0.1,
               dtype=jnp.float32, remat="none", scan_layers: bool = False, attention_impl=None,
               rope: str = "1d", rngs: nnx.Rngs):
    if codebook_size < 2:
      raise ValueError(f"codebook_size must be >= 2, got {codebook_size}")
    check_generator_args(num_classes=num_classes, class_dropout=class_dropout, seq_len=seq_len)
    self.codebook_size, self.seq_len, self.num_classes = codebook_size, seq_len, num_classes
    self.class_dropout = class_dropout
    self.net = TokenTrunk(input_vocab=codebook_size + num_classes + self.EXTRA_IDS,
                          output_vocab=codebook_size, width=width, depth=depth, heads=heads,
                          mlp_ratio=mlp_ratio, causal=self.CAUSAL, dtype=dtype, remat=remat,
                          scan_layers=scan_layers, attention_impl=attention_impl, rope=rope,
                          rngs=rngs)

