"""The T5 encoder (Raffel et al. 2020; v1.1 / Flan-T5) as a frozen text encoder (TexTok).

The Hugging Face `T5EncoderModel` (transformers `models/t5/modeling_t5.py`) composed from the shared
parts:

  ids int32 [B, L] -> shared embedding [V, W] (no scaling, no position embedding)
  -> N pre-norm Blocks: RMSNorm (T5LayerNorm: x / sqrt(mean(x^2) + eps) * w, no mean, no bias,
     eps 1e-6); attention without biases and WITHOUT the 1/sqrt(E) score scale (T5 folds it into
     the initialisation), q/k/v/o fused into qkv [W, 3, H, E] / out [H, E, W] with E = d_kv (H * E may
     differ from W); MLP without biases: "geglu" (v1.1's gated-gelu, tanh GELU; the v1.0 ReLU MLP
     is not supported)
  -> final RMSNorm -> last_hidden_state [B, L, W].

Relative position bias: block 0's `relative_attention_bias` [num_buckets, H] is looked up at the
bucket of each (query i, key j) pair and added to the scores of EVERY block (HF passes block 0's
position_bias on), together with the padding mask. `relative_position_bucket` is T5's bidirectional
bucketing: half the buckets for keys after the query; within each half, exact buckets for distances
below num_buckets / 4, then logarithmically spaced ones up to max_distance, the last bucket beyond.

Dimension names: B batch, L text length, W width (d_model), H heads, E head dim (d_kv), V vocabulary.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxtok.nn.block import Block
from jaxtok.nn.norm import Norm
from jaxtok.nn import options
from jaxtok.nn.options import model_kwargs
from jaxtok.nn.stack import Stack
from jaxtok.sharding import logical_init

_EPS = 1e-6


def relative_position_bucket(relative_position: np.ndarray, *, num_buckets: int = 32,
                             max_distance: int = 128) -> np.ndarray:
  """T5's bidirectional bucket of key - query offsets: int [...] -> int32 [...] in [0, num_buckets)."""
  rel = np.asarray(relative_position, np.int64)
  half = num_buckets // 2
  out = (rel > 0).astype(np.int64) * half
  dist = np.abs(rel)
  exact = half // 2
  with np.errstate(divide="ignore"):
    # float32 as torch computes it, truncated toward zero by .to(long).
    large = exact + (np.log(dist.astype(np.float32) / np.float32(exact)) /
                     np.float32(math.log(max_distance / exact)) * np.float32(half - exact))
  large = np.minimum(np.where(dist < exact, 0, large).astype(np.int64), half - 1)
  return (out + np.where(dist < exact, dist, large)).astype(np.int32)


class T5Encoder(nnx.Module):
  """ids int32 [B, L] (+ mask bool [B, L]) -> last_hidden_state float32 [B, L, W].

  Args:
    vocab_size, width (d_model), depth (num_layers), num_heads, head_dim (d_kv), mlp_hidden (d_ff).
    mlp: "geglu" (T5 v1.1 / Flan-T5; the only kind).
    num_buckets, max_distance: the relative position buckets (32, 128 in every release).
    dtype, remat, scan_layers, attention_impl: `nn.options`.
  """

  def __init__(self, *, vocab_size: int = 32128, width: int = 512, depth: int = 8, num_heads: int = 6,
               head_dim: int = 64, mlp_hidden: int = 1024, mlp: str = "geglu",
               num_buckets: int = 32, max_distance: int = 128, dtype: Any = jnp.float32,
               remat: Any = "none", scan_layers: bool = False, attention_impl: Any = None,
               rngs: nnx.Rngs):
    for name, v in (("vocab_size", vocab_size), ("width", width), ("depth", depth),
                    ("num_heads", num_heads), ("head_dim", head_dim), ("mlp_hidden", mlp_hidden),
                    ("num_buckets", num_buckets), ("max_distance", max_distance)):
      if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"T5 {name} must be an int >= 1, got {v!r}")
    if mlp != "geglu":
      raise ValueError(f"T5 mlp must be 'geglu' (v1.1 / Flan-T5; v1.0's ReLU MLP is not supported), "
                       f"got {mlp!r}")
    self.vocab_size, self.num_buckets, self.max_distance = vocab_size, num_buckets, max_distance
    self.dtype = dtype
    self.embed = nnx.Param(logical_init(nnx.initializers.normal(1.0), "vocab", "embed")(
        rngs.params(), (vocab_size, width), jnp.float32))
    self.relative_bias = nnx.Param(logical_init(nnx.initializers.normal(0.02), None, "heads")(
        rngs.params(), (num_buckets, num_heads), jnp.float32))
    block = lambda r: Block(width, num_heads, mlp_hidden=mlp_hidden, mlp=mlp, mlp_bias=False,
                            norm="rms", norm_eps=_EPS, head_dim=head_dim, qkv_bias=False,
                            out_bias=False, scale=1.0, implementation=attention_impl, dtype=dtype,
                            rngs=r)
    self.blocks = Stack(depth, block, scan_layers=scan_layers, remat=remat, rngs=rngs)
    self.norm = Norm(width, kind="rms", eps=_EPS, dtype=dtype, rngs=rngs)

  def position_bias(self, length: int) -> jax.Array:
    """float32 [1, H, L, L]: the learned bias of each (query, key) pair's bucket."""
    pos = np.arange(length)
    buckets = relative_position_bucket(pos[None, :] - pos[:, None], num_buckets=self.num_buckets,
                                       max_distance=self.max_distance)
    bias = jnp.take(self.relative_bias.get_value(), jnp.asarray(buckets), axis=0)  # [L, L, H]
    return bias.transpose(2, 0, 1)[None]

  def __call__(self, ids: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """ids int [B, L] in [0, V); mask bool [B, L] (True = a real token; None = all) -> float32
    [B, L, W]. Padded positions attend too (as HF computes them) but no query attends to them."""
    if not hasattr(ids, "ndim") or ids.ndim != 2 or not jnp.issubdtype(ids.dtype, jnp.integer):
      raise ValueError(f"ids must be an integer array [B, L], got "
                       f"{getattr(ids, 'dtype', type(ids).__name__)} {getattr(ids, 'shape', '')}")
    if mask is not None and tuple(mask.shape) != tuple(ids.shape):
      raise ValueError(f"mask must have the shape of ids {tuple(ids.shape)}, got {tuple(mask.shape)}")
    x = jnp.take(self.embed.get_value(), ids, axis=0).astype(self.dtype)
    bias = self.position_bias(ids.shape[1])
    if mask is not None:
      # HF's extended mask: (1 - mask) * finfo(float32).min added to the scores.
      bias = bias + jnp.where(mask[:, None, None, :], 0.0, jnp.finfo(jnp.float32).min)
    return self.norm(self.blocks(x, mask=bias)).astype(jnp.float32)


_FIELDS = ("vocab_size", "width", "depth", "num_heads", "head_dim", "mlp_hidden", "mlp", "num_buckets",
           "max_distance")


def make_model(cfg: Mapping[str, Any], *, rngs: nnx.Rngs) -> T5Encoder:
  """A T5 encoder from plain fields (`_FIELDS`, the common options); unknown keys raise ValueError."""
  kwargs = model_kwargs(cfg, _FIELDS, model="T5", extra=("name",), cls=T5Encoder)
  return T5Encoder(**kwargs, rngs=rngs)


def abstract_params(cfg: Mapping[str, Any]) -> nnx.State:
  """The parameter shapes of `make_model(cfg)` (nothing allocated)."""
  return options.abstract_params(make_model, cfg)
