"""The CLIP text encoder (Radford et al. 2021) as a frozen feature network.

open_clip's `TextTransformer` / OpenAI CLIP's text tower (the model TA-TiTok and MaskGen condition on:
open_clip `ViT-L-14-336`, pretrained "openai") composed from the shared parts:

  token ids int32 [B, T] -> token_embedding [V, W] + positional_embedding [T_max, W][:T]
  -> L pre-norm Blocks (LayerNorm eps 1e-5, fused qkv with biases, MLP 4x with QuickGELU for the
     OpenAI weights or exact GELU for open_clip's own, causal attention mask)
  -> ln_final -> tokens [B, T, W]
  pooled [B, D] = ln_final output at the end-of-text token (the argmax of the ids: EOT has the
  largest id of the vocabulary) @ text_projection [W, D].

The outputs name what the two consumers read (bytedance/1d-tokenizer, checked at its HEAD):
  "tokens"       ln_final(all blocks) [B, T, W]: TA-TiTok's `text_guidance` (utils/train_utils.py).
  "penultimate"  the hidden state after the first L-1 blocks (no norm) [B, T, W]: MaskGen's per-token
                 condition (`open_clip_text_encoding` returns x_penultimate).
  "pooled"       [B, D]: MaskGen's pooled condition.
Because the mask is causal, the padding after EOT never changes the features of the tokens before it.

Sizes (`SIZES`): "L-14" is the text tower of ViT-L/14 (width 768, 12 layers, 12 heads, vocab 49408,
context 77, projection 768).

Dimension names: B batch, T context length, V vocabulary, W width, D projection width, L layers.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtok.nn.block import Block
from jaxtok.nn.embeddings import trunc_normal
from jaxtok.nn.norm import Norm
from jaxtok.nn import options
from jaxtok.nn.stack import Stack
from jaxtok.sharding import logical_init

# name -> (width, depth, heads, vocab, context, projection)
SIZES = {"L-14": (768, 12, 12, 49408, 77, 768), "B-16": (512, 12, 8, 49408, 77, 512)}
ACTIVATIONS = ("quick_gelu", "gelu")
OUTPUTS = ("tokens", "penultimate", "pooled")


class CLIPText(nnx.Module):
  """token ids int32 [B, T] (T <= context_length) -> {"tokens", "penultimate", "pooled"} float32.

  Args:
    width, depth, num_heads: W, L and the head count.
    vocab_size: V; context_length: rows of the positional table.
    embed_dim: D, the projection width.
    activation: "quick_gelu" (OpenAI weights) or "gelu" (open_clip-trained weights).
    dtype, remat, scan_layers, attention_impl: `nn.options`.
  """

  def __init__(self, *, width: int = 768, depth: int = 12, num_heads: int = 12,
               vocab_size: int = 49408, context_length: int = 77, embed_dim: int = 768,
               activation: str = "quick_gelu", dtype: Any = jnp.float32, remat: Any = "none",
               scan_layers: bool = False, attention_impl: Any = None, rngs: nnx.Rngs):
    for name, v in (("width", width), ("depth", depth), ("num_heads", num_heads),
                    ("vocab_size", vocab_size), ("context_length", context_length),
                    ("embed_dim", embed_dim)):
      if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"CLIPText {name} must be an int >= 1, got {v!r}")
    if activation not in ACTIVATIONS:
      raise ValueError(f"CLIPText activation must be one of {ACTIVATIONS}, got {activation!r}")
    self.width, self.depth, self.context_length, self.vocab_size = width, depth, context_length, vocab_size
    self.dtype = dtype
    param = lambda init, shape, *names: nnx.Param(logical_init(init, *names)(
        rngs.params(), shape, jnp.float32))
    # open_clip's init: token table N(0, 0.02), positions N(0, 0.01), projection N(0, W^-0.5).
    self.token_embedding = param(nnx.initializers.normal(0.02), (vocab_size, width), "vocab", "embed")
    self.positional_embedding = param(nnx.initializers.normal(0.01), (context_length, width), None,
                                      "embed")
    block = lambda r: Block(width, num_heads, mlp_hidden=4 * width, mlp=activation,
                            implementation=attention_impl, dtype=dtype, rngs=r)
    self.transformer = Stack(depth, block, scan_layers=scan_layers, remat=remat, rngs=rngs)
    self.ln_final = Norm(width, dtype=dtype, rngs=rngs)
    self.text_projection = param(trunc_normal(width**-0.5), (width, embed_dim), "embed", None)

  def __call__(self, ids: jax.Array) -> dict[str, jax.Array]:
    """ids int [B, T] (1 <= T <= context_length, values in [0, V)) -> the features (module doc)."""
    if not hasattr(ids, "ndim") or ids.ndim != 2 or not jnp.issubdtype(ids.dtype, jnp.integer):
      raise ValueError(f"ids must be int [B, T], got {getattr(ids, 'dtype', type(ids).__name__)} "
                       f"{getattr(ids, 'shape', '')}")
    t = ids.shape[1]
    if not 1 <= t <= self.context_length:
      raise ValueError(f"ids must hold 1..{self.context_length} tokens (context_length), got {t}")
    x = jnp.take(self.token_embedding.get_value(), ids, axis=0)
    x = (x + self.positional_embedding.get_value()[:t]).astype(self.dtype)
    if self.depth > 1:
      x, penultimate = self.transformer(x, causal=True, capture=self.depth - 1)
    else:
      penultimate, x = x, self.transformer(x, causal=True)
    tokens = self.ln_final(x).astype(jnp.float32)
    eot = jnp.argmax(ids, axis=-1)  # EOT is the largest id (as open_clip's text_global_pool "argmax")
    pooled = tokens[jnp.arange(ids.shape[0]), eot] @ self.text_projection.get_value()
    return {"tokens": tokens, "penultimate": penultimate.astype(jnp.float32), "pooled": pooled}


_FIELDS = ("width", "depth", "num_heads", "vocab_size", "context_length", "embed_dim", "activation")


def config_for(size: str, **overrides: Any) -> dict[str, Any]:
  """The config of a released text tower ("L-14", "B-16"; OpenAI weights: QuickGELU), plus overrides."""
  if size not in SIZES:
    raise ValueError(f"CLIP text size must be one of {sorted(SIZES)}, got {size!r}")
  w, d, h, v, c, e = SIZES[size]
  return {**dict(width=w, depth=d, num_heads=h, vocab_size=v, context_length=c, embed_dim=e,
                 activation="quick_gelu"), **overrides}


# make_model(cfg, *, rngs) -> CLIPText from plain fields (`_FIELDS`, `size` for a preset, the common
# options; unknown keys raise ValueError); abstract_params(cfg): its parameter shapes, unallocated.
make_model, abstract_params = options.tower_builders(CLIPText, _FIELDS, model="CLIPText",
                                                     preset=lambda size, kw: config_for(size))


def features_fn(cfg: Mapping[str, Any]):
  """fn(params, ids) -> the `__call__` dict of `make_model(cfg)` holding `params` (frozen use:
  jit-friendly, the parameters are only read)."""
  return options.frozen_apply(make_model, cfg)
