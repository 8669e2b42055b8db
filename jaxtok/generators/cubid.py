"""CubiD: masked discrete diffusion over every (position, dimension) element of dimension-wise
quantized tokens (Wang et al., "Cubic Discrete Diffusion: Discrete Visual Generation on
High-Dimensional Representation Tokens").

Data: float token datasets [B, T, D] (VAE or representation features), quantized on the fly per
dimension by `quantizers.dimwise` (the `tokenbridge.DimwiseLevels` bins: L = 2**bits levels). The
model sees the [T, D] grid of level indices in which any element may be the mask id L:

  input    position t's vector = sum_d E[d (L + 1) + x[t, d]] (one embedding table of D (L + 1)
           rows: every dimension has its own L levels and its own mask embedding), a class (or
           null) id in front, a bidirectional `TokenTrunk` over the T + 1 positions;
  output   D * L logits per position, read as [T, D, L]: every element's level distribution.

Training masks, per sample, n = max(1, round(T D r)) of the T D elements chosen uniformly, with
r = cos(pi/2 u), u ~ U(0, 1) (the MaskGIT cosine schedule), and takes the cross-entropy of the masked
elements. Generation (`jaxtok.samplers.cubid`) fills the whole cube in a fixed number of steps,
independent of D.

Dimension names: B batch, T positions, D dimensions, L levels, W width, C classes.
"""
from __future__ import annotations

import math
from typing import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtok.generators.bert import random_mask
from jaxtok.generators.tokenbridge import DimwiseLevels
from jaxtok.generators.trunk import TokenTrunk, check_generator_args, drop_classes
from jaxtok.nn.options import model_kwargs
from jaxtok.sharding import logical_init

FIELDS = ("token_dim", "seq_len", "num_classes", "width", "depth", "heads", "bits", "std_range",
          "value_range", "class_dropout")


def cosine_ratio(u: jax.Array) -> jax.Array:
  """Mask ratio cos(pi/2 u) for u in [0, 1), clipped to [1e-6, 1]."""
  return jnp.clip(jnp.cos(u * (math.pi / 2)), 1e-6, 1.0)


def element_mask(rng: jax.Array, batch: int, seq_len: int, dims: int) -> jax.Array:
  """Training mask bool [B, T, D]: per sample max(1, round(T D cos(pi/2 u))) elements, uniformly."""
  return random_mask(rng, batch, seq_len * dims, schedule=cosine_ratio).reshape(batch, seq_len, dims)


class CubiD(nnx.Module, DimwiseLevels):
  """Bidirectional model over a [T, D] grid of level indices (mask id = L)."""

  def __init__(self, *, token_dim: int, seq_len: int, num_classes: int = 0, width: int = 768,
               depth: int = 12, heads: int = 12, bits: int = 4, std_range: float = 3.0,
               value_range: float = 5.0, class_dropout: float = 0.1, dtype=jnp.float32,
               remat="none", scan_layers: bool = False, attention_impl=None, rngs: nnx.Rngs):
    check_generator_args(num_classes=num_classes, class_dropout=class_dropout, token_dim=token_dim,
                         seq_len=seq_len)
    self.token_dim, self.seq_len, self.num_classes = token_dim, seq_len, num_classes
    self.class_dropout = class_dropout
    self.init_levels(token_dim, bits, std_range, value_range)
    self.elements = nnx.Embed(token_dim * (self.levels + 1), width,
                              embedding_init=logical_init(nnx.initializers.normal(0.02), "vocab", "embed"),
                              rngs=rngs)
    self.net = TokenTrunk(input_vocab=num_classes + 1, output_vocab=token_dim * self.levels,
                          width=width, depth=depth, heads=heads, causal=False, dtype=dtype,
                          remat=remat, scan_layers=scan_layers, attention_impl=attention_impl,
                          rngs=rngs)

  @property
  def mask_id(self) -> int:
    return self.levels

  @property
  def null_id(self) -> int:
    return self.num_classes

  def __call__(self, grid: jax.Array, labels=None, *, train: bool = False, rng=None) -> jax.Array:
    """Logits float32 [B, T, D, L] for level indices grid int32 [B, T, D] in [0, L] (L = mask)."""
    b, t, d = grid.shape
    if t != self.seq_len or d != self.token_dim:
      raise ValueError(f"grid must be [B, {self.seq_len}, {self.token_dim}], got {tuple(grid.shape)}")
    cond = (jnp.full((b,), self.null_id, jnp.int32) if labels is None or self.num_classes == 0
            else jnp.where(jnp.asarray(labels) < 0, self.null_id, jnp.asarray(labels, jnp.int32)))
    cond = drop_classes(cond, null_id=self.null_id, class_dropout=self.class_dropout,
                        num_classes=self.num_classes, train=train, rng=rng)
    ids = grid.astype(jnp.int32) + jnp.arange(d, dtype=jnp.int32) * (self.levels + 1)
    x = self.elements(ids).sum(axis=2)  # [B, T, W]
    x = jnp.concatenate([self.net.embed(cond)[:, None].astype(x.dtype), x], axis=1)
    return self.net.forward_embedded(x)[:, 1:].reshape(b, t, d, self.levels)


def loss(model: CubiD, tokens: jax.Array, labels, *, rng: jax.Array, train: bool = True, step=None):
  """Cross-entropy of the masked elements and metrics {loss, masked_accuracy, mask_ratio}.

  tokens: float [B, T, D] latents (quantized here). `step` does not change the objective.
  """
  del step
  if tokens.ndim != 3 or not jnp.issubdtype(tokens.dtype, jnp.floating):
    raise ValueError(f"cubid trains on float tokens [B, T, D], got {tokens.dtype} {tuple(tokens.shape)}")
  r_mask, r_drop = jax.random.split(rng)
  b, t, d = tokens.shape
  indices, _ = model.quantize(tokens)
  mask = element_mask(r_mask, b, t, d)
  logits = model(jnp.where(mask, model.mask_id, indices), labels, train=train, rng=r_drop)
  ce = -jnp.take_along_axis(jax.nn.log_softmax(logits, -1), indices[..., None], -1)[..., 0]
  w = mask.astype(jnp.float32)
  value = jnp.sum(ce * w) / jnp.maximum(w.sum(), 1.0)
  correct = (jnp.argmax(logits, -1) == indices) & mask
  return value, {"loss": value, "masked_accuracy": correct.sum() / jnp.maximum(mask.sum(), 1),
                 "mask_ratio": mask.mean()}


def make_model(cfg: Mapping, *, rngs: nnx.Rngs) -> CubiD:
  """A CubiD from its constructor's fields plus `nn.options.COMMON` and `name`; any other key raises
  ValueError."""
  return CubiD(**model_kwargs(cfg, FIELDS, model="cubid", cls=CubiD), rngs=rngs)
