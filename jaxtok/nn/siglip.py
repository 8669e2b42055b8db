"""SigLIP's vision tower (Zhai et al. 2023) as a frozen feature network (TokenFlow / DualToken).

The Hugging Face `SiglipVisionTransformer` (transformers `models/siglip/modeling_siglip.py`, the layout
of the released google/siglip-* checkpoints) composed from the shared parts:

  images [B, H, W, 3] in [0, 1] -> (x - 0.5) / 0.5 (SiglipImageProcessor's mean = std = 0.5)
  -> p x p patches (conv stride p, bias, "valid": floor(S / p) per side; PatchEmbed) + learned positions [N, W] (no class token;
     the input must be the training size: the table is not interpolated)
  -> L pre-norm Blocks (LayerNorm eps 1e-6, separate q/k/v projections with biases fused into one
     qkv [W, 3, H, E], tanh-approximated GELU MLP: HF's "gelu_pytorch_tanh")
  -> post_layernorm -> last_hidden_state [B, N, W]
  -> optional MAP head (`SiglipMultiheadAttentionPoolingHead`): a learned probe attends to the N
     tokens through torch's nn.MultiheadAttention (in_proj [3W, W]), then x + MLP(LayerNorm(x))
     -> pooler_output [B, W].

The MAP head's cross-attention (query: the probe; keys/values: the tokens) is the shared
self-`Attention` over [probe, tokens] with a mask that lets the probe row see only the tokens: the
probe's output row is then exactly softmax(q_probe k_tokens^T / sqrt(E)) v_tokens, with the same
fused in-projection as nn.MultiheadAttention's in_proj_weight.

`hidden_states[k]` (HF's output_hidden_states: k = 0 the embeddings, k = i after block i) is what
TokenFlow's semantic encoder reads (`hidden_states[-2]` of SigLIP-so400m, the penultimate block) and
DualToken's shallow / deep features; `__call__(images, layers=(k, ...))` returns them.

Presets (`SIZES`): B/16, L/16, So400m/14 (width, depth, heads, MLP hidden). Dimension names: B batch,
H/W image size, p patch, N patches, W width, E head dim.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxtok.nn.attention import Attention
from jaxtok.nn.block import Block
from jaxtok.nn.embeddings import trunc_normal
from jaxtok.nn.mlp import Mlp
from jaxtok.nn.norm import Norm
from jaxtok.nn import options
from jaxtok.nn.stack import Stack
from jaxtok.nn.vit import PatchEmbed
from jaxtok.sharding import logical_init

_LN_EPS = 1e-6

# name -> (width, depth, heads, mlp hidden) of the google/siglip-* vision towers.
SIZES: dict[str, tuple[int, int, int, int]] = {
    "B": (768, 12, 12, 3072),
    "L": (1024, 24, 16, 4096),
    "So400m": (1152, 27, 16, 4304),
}


class MAPHead(nnx.Module):
  """Multihead attention pooling: tokens [B, N, W] -> [B, W] (SigLIP's `head`)."""

  def __init__(self, width: int, num_heads: int, mlp_hidden: int, *, dtype=jnp.float32,
               attention_impl=None, rngs: nnx.Rngs):
    self.width = width
    self.probe = nnx.Param(logical_init(nnx.initializers.normal(0.02), "embed")(
        rngs.params(), (width,), jnp.float32))
    self.attn = Attention(width, num_heads, implementation=attention_impl, dtype=dtype, rngs=rngs)
    self.norm = Norm(width, eps=_LN_EPS, dtype=dtype, rngs=rngs)
    self.mlp = Mlp(width, mlp_hidden, approximate=True, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    b, n, _ = x.shape
    probe = jnp.broadcast_to(self.probe.get_value().astype(x.dtype), (b, 1, self.width))
    # Row 0 (the probe) sees the N tokens only; the token rows' outputs are discarded, they only
    # need a valid key each (they see everything).
    mask = np.ones((1 + n, 1 + n), bool)
    mask[0, 0] = False
    y = self.attn(jnp.concatenate([probe, x], axis=1), mask=jnp.asarray(mask))[:, 0]
    return y + self.mlp(self.norm(y))


class SigLIPVision(nnx.Module):
  """images float [B, S, S, 3] in [0, 1] -> dict of float32 features (see `__call__`).

  Args:
    width, depth, num_heads: W, L, H.
    mlp_hidden: the MLP hidden width (4304 for So400m, 4W for B/L).
    patch_size, image_size: p and S (the position table has (S/p)^2 rows).
    head: build the MAP head (pooler_output); the released towers have one, TokenFlow and DualToken
      do not use it.
    dtype, remat, scan_layers, attention_impl: `nn.options`.
  """

  def __init__(self, *, width: int = 768, depth: int = 12, num_heads: int = 12,
               mlp_hidden: int = 3072, patch_size: int = 16, image_size: int = 224,
               head: bool = False, dtype: Any = jnp.float32, remat: Any = "none",
               scan_layers: bool = False, attention_impl: Any = None, rngs: nnx.Rngs):
    for name, v in (("width", width), ("depth", depth), ("num_heads", num_heads),
                    ("mlp_hidden", mlp_hidden), ("patch_size", patch_size),
                    ("image_size", image_size)):
      if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"SigLIP {name} must be an int >= 1, got {v!r}")
    if image_size < patch_size:
      raise ValueError(f"SigLIP image_size must be >= patch_size {patch_size}, got {image_size}")
    if width % num_heads:
      raise ValueError(f"SigLIP width {width} must be a multiple of num_heads {num_heads}")
    self.width, self.depth, self.patch_size, self.image_size = width, depth, patch_size, image_size
    self.num_patches = (image_size // patch_size)**2
    self.patch_embed = PatchEmbed(patch_size, width, dtype=dtype, rngs=rngs)
    self.pos_embed = nnx.Param(logical_init(trunc_normal(0.02), None, "embed")(
        rngs.params(), (self.num_patches, width), jnp.float32))

    def block(r):
      blk = Block(width, num_heads, mlp_hidden=mlp_hidden, norm_eps=_LN_EPS,
                  implementation=attention_impl, dtype=dtype, rngs=r)
      # HF's "gelu_pytorch_tanh": Block builds its Mlp with exact GELU; the flag is Mlp's own.
      blk.mlp.approximate = True
      return blk

    self.blocks = Stack(depth, block, scan_layers=scan_layers, remat=remat, rngs=rngs)
    self.norm = Norm(width, eps=_LN_EPS, dtype=dtype, rngs=rngs)
    self.head = MAPHead(width, num_heads, mlp_hidden, dtype=dtype, attention_impl=attention_impl,
                        rngs=rngs) if head else None

  def check_layer(self, layer: Any) -> int:
    """layer as an int in [0, L] (an index of HF's hidden_states; negative counts from L + 1)."""
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not (
        -(self.depth + 1) <= layer <= self.depth):
      raise ValueError(f"SigLIP layer must be an int in [{-(self.depth + 1)}, {self.depth}] (an index "
                       f"of hidden_states, 0 = embeddings), got {layer!r}")
    return int(layer) % (self.depth + 1)

  def embed(self, images: jax.Array) -> jax.Array:
    """images [B, S, S, 3] in [0, 1] -> hidden_states[0] [B, N, W] in the compute dtype."""
    if not hasattr(images, "ndim") or images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"images must be [B, H, W, 3], got shape {getattr(images, 'shape', None)}")
    if tuple(images.shape[1:3]) != (self.image_size, self.image_size):
      raise ValueError(f"images must be {self.image_size} x {self.image_size} (SigLIP's position "
                       f"table is not interpolated), got shape {tuple(images.shape)}")
    # The conv's "valid" padding drops the last S mod p rows and columns (384 px at patch 14: 27 x 27).
    side = (self.image_size // self.patch_size) * self.patch_size
    x = self.patch_embed((images[:, :side, :side].astype(jnp.float32) - 0.5) / 0.5)
    return x + self.pos_embed.get_value().astype(x.dtype)

  def __call__(self, images: jax.Array, *, layers: Sequence[int] = ()) -> dict[str, jax.Array]:
    """images float [B, S, S, 3] in [0, 1] -> float32 features:
      last_hidden_state [B, N, W] (after post_layernorm), pooler_output [B, W] (with the head),
      hidden_states_<k> [B, N, W] for each k in `layers` (HF's hidden_states[k], before any norm;
      a negative k is stored under its index k mod (L + 1)).
    """
    ks = sorted({self.check_layer(k) for k in layers})
    x = self.embed(images)
    out: dict[str, jax.Array] = {}
    done = 0
    for k in ks:  # run up to each requested block in turn, keeping its hidden state
      if k > done:
        x = self._blocks(x, done, k)
        done = k
      out[f"hidden_states_{k}"] = x.astype(jnp.float32)
    if done < self.depth:
      x = self._blocks(x, done, self.depth)
    y = self.norm(x)
    out["last_hidden_state"] = y.astype(jnp.float32)
    if self.head is not None:
      out["pooler_output"] = self.head(y).astype(jnp.float32)
    return out

  def _blocks(self, x, lo: int, hi: int):
    """Blocks lo .. hi - 1 over x (the Stack itself when that is all of them)."""
    if lo == 0 and hi == self.depth:
      return self.blocks(x)
    return self._loop(x, lo, hi)

  def _loop(self, x, lo, hi):
    if self.blocks.scan_layers:
      graphdef, state = nnx.split(self.blocks.blocks)
      for i in range(lo, hi):
        x = nnx.merge(graphdef, jax.tree.map(lambda a, i=i: a[i], state))(x)
      return x
    for i in range(lo, hi):
      x = self.blocks.blocks[i](x)
    return x


_FIELDS = ("width", "depth", "num_heads", "mlp_hidden", "patch_size", "image_size", "head")


def config_for(size: str, **overrides: Any) -> dict[str, Any]:
  """The config of a released tower: size "B" (patch 16, 224 px), "L" (16, 256) or "So400m" (14, 384;
  TokenFlow's teacher), with the MAP head, plus overrides."""
  if size not in SIZES:
    raise ValueError(f"SigLIP size must be one of {sorted(SIZES)}, got {size!r}")
  width, depth, heads, hidden = SIZES[size]
  patch, image = {"B": (16, 224), "L": (16, 256), "So400m": (14, 384)}[size]
  cfg = dict(width=width, depth=depth, num_heads=heads, mlp_hidden=hidden, patch_size=patch,
             image_size=image, head=True)
  cfg.update(overrides)
  return cfg


# make_model(cfg, *, rngs) -> SigLIPVision from plain fields (`_FIELDS`, `size` for a preset, the common
# options; unknown keys raise ValueError); abstract_params(cfg): its parameter shapes, unallocated.
make_model, abstract_params = options.tower_builders(SigLIPVision, _FIELDS, model="SigLIP",
                                                     preset=lambda size, kw: config_for(size))
