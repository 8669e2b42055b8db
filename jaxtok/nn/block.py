"""The transformer block: attention and MLP residual branches, pre-norm (or post-norm), AdaLN optional.

  pre-norm:  x = x + attn(norm1(x));  x = x + mlp(norm2(x))            (ViT, Llama, FlexTok)
  post-norm: x = norm1(x + attn(x));  x = norm2(x + mlp(x))            (BERT)
  AdaLN (pre-norm only): from silu(cond) one zero-initialised Dense gives, per segment of the
    sequence, (gate_msa, gate_mlp, shift_msa, scale_msa, shift_mlp, scale_mlp) (FlexTok's chunk
    order), and x = x + gate_msa * attn(norm1(x) * (1 + scale_msa) + shift_msa), likewise for the MLP.
  LayerScale (CaiT / DINOv2, pre-norm only): learned per-channel ls1, ls2 [W] (initialised to
    `layerscale`) scale each branch before the residual add: x = x + ls1 * attn(norm1(x)), likewise
    ls2 for the MLP.
    A fresh AdaLN block is the identity (adaLN-zero). `ada_segments` > 1 gives each of that many
    consecutive parts of the sequence (lengths `segments`, static) its own modulation. A condition
    per position, cond [B, T, C] (RAR: class embedding + a learned per-position embedding), gives
    every position its own modulation through the same Dense.

Cross-attention to a context [B, S, Wc] (`cross`, pre-norm only; its own `Attention(cross=True)`
with separate q and kv projections, and its own norm `norm_c`), in one of two orders:
  "residual": x = x + attn(norm1 x);  x = x + cross_attn(norm_c x, context);  x = x + mlp(norm2 x)
    (the transformer decoder / PixArt order). With AdaLN the cross branch is not modulated: the
    condition modulates only the attention and MLP branches, as in DiT-style cross-attention blocks.
  "ada" (D-AR's SiTBlock, showlab/D-AR `diff_decoder.py`; needs AdaLN and C = W): the cross
    branch reads x before the self-attention and becomes part of the condition, per position:
    s = cross_attn(norm_c x, context); (six modulations) = ada(silu(cond + s)); then the modulated
    attention and MLP branches as above.
  context_mlp (an `Mlp` kind): each block first maps the context through its own
    norm_ctx(mlp(context)) with an Mlp Wc -> Wc -> Wc (D-AR's per-block cond_embed + LayerNorm).
  `context_mask` (bool or additive, broadcastable to [B, H, T, S]) masks context positions. The
  KV cache of a cross block is a `CrossCache`: the self-attention's KVCache, written step by step,
  and the context's k, v [B, H, S, E], computed once by `init_cache(..., context=)` and reused by
  every `extend`.

Key prefix and input position (Instella-T2I's blocks; both off by default): `prefix` [B, P, W]
adds keys/values ahead of the sequence's own: the attention's queries come from the T positions,
its keys and values from [prefix; h] through the same projections and k-norm (a self-attention
called with `context`), `mask` then ranging over the P + T keys (causal must be False: pass the
mask); `attn_pos` [T, W] or [B, T, W] is added to the attention branch's normed (and modulated)
input h before q, k and v, and is not part of the residual.

Public pieces for models that wire the branches themselves (MaskGen's MM-DiT JointBlock):
`modulation(cond, segments, length)`, `attn.project`, `attn.output`, `norm1`, `norm2`, `mlp`.

The block's output is pinned to (act_batch, act_seq, act_embed).

Dimension names: B batch, T sequence, S context length, W width, Wc context width, C condition
width.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxtok import sharding
from jaxtok.nn.attention import Attention, KVCache, dropout
from jaxtok.nn.dense import Dense
from jaxtok.nn.mlp import Mlp
from jaxtok.nn.norm import Norm
from jaxtok.sharding import logical_init

CROSS_ORDERS = ("residual", "ada")


class CrossCache(NamedTuple):
  """The cache of a cross block: the self-attention's k, v and the context's (both [B, H, S, E];
  a scanned Stack stacks each along a leading layer axis)."""
  self_kv: KVCache
  context: KVCache


def _map_self_caches(tree: Any, fn: Callable[[KVCache], KVCache]) -> Any:
  """`tree` with fn applied to every self-attention `KVCache` (a `CrossCache`'s self_kv; its
  context keys and every other leaf stay as they are)."""
  def fix(node):
    if isinstance(node, CrossCache):
      return CrossCache(fn(node.self_kv), node.context)
    return fn(node) if isinstance(node, KVCache) else node
  return jax.tree.map(fix, tree, is_leaf=lambda n: isinstance(n, (KVCache, CrossCache)))


def with_cache_length(tree: Any, length: int) -> Any:
  """`tree` (any pytree) with every self-attention `KVCache` in it cut or zero-padded to `length`
  slots (axis -2 of k and v, so a scanned stack's [L, B, H, S, E] too); a `CrossCache`'s fixed
  context keys and every other leaf are left as they are. Slots past the new length must be unused
  (`samplers.autoregressive.sample(segment=)` grows the caches segment by segment)."""
  def resize(a):
    have = a.shape[-2]
    if have >= length:
      return a[..., :length, :]
    return jnp.pad(a, [(0, 0)] * (a.ndim - 2) + [(0, length - have), (0, 0)])
  return _map_self_caches(tree, lambda kv: KVCache(resize(kv.k), resize(kv.v)))


def self_cache_length(tree: Any) -> int | None:
  """The most slots of any self-attention `KVCache` in `tree` (None when it holds none)."""
  lengths = []
  _map_self_caches(tree, lambda kv: lengths.append(kv.k.shape[-2]) or kv)
  return max(lengths) if lengths else None


class Block(nnx.Module):
  """x [B, T, W] -> [B, T, W] in the compute dtype.

  Args:
    width, num_heads: W and H.
    mlp_hidden: MLP hidden width M; mlp: an `Mlp` kind ("gelu", "gelu_tanh", "quick_gelu",
      "swiglu", "geglu", "silu"); mlp_bias: MLP biases.
    norm: "layer" or "rms"; norm_eps; norm_affine: learned scale (and bias for "layer").
    post_norm: BERT's post-norm order instead of pre-norm.
    adaln: add AdaLN-zero modulation from a condition of width cond_dim (default W), with
      ada_segments modulations per sample.
    layerscale: None, or the initial value of the LayerScale vectors ls1, ls2 [W] (DINOv2: 1.0 in
      its released models, 1e-5 when training from scratch).
    cross: None, "residual" or "ada": a cross-attention branch to a context (module docstring);
      context_dim: its width Wc (default W); context_mlp: None or an `Mlp` kind for the per-block
      context map.
    head_dim, qkv_bias, out_bias, qk_norm, qk_norm_eps, qk_norm_affine, qk_norm_bias, rope,
      rope_theta, scale, implementation, qkv_init, out_init, qkv_clip: passed to `Attention`. mlp_init: the
      MLP kernels' initializer.
    dropout: dropout rate of the attention output projection, the MLP hidden activation and the
      MLP output (timm's proj_drop / Mlp drop, as RAR's training config); attn_dropout: dropout
      rate of the attention probabilities. Both act only in a call given `dropout_rng`.
    dtype: compute dtype (parameters float32).
  """

  def __init__(self, width: int, num_heads: int, *, mlp_hidden: int, mlp: str = "gelu",
               mlp_bias: bool = True, norm: str = "layer", norm_eps: float = 1e-5,
               norm_affine: bool = True, post_norm: bool = False, adaln: bool = False,
               cond_dim: int | None = None, ada_segments: int = 1, layerscale: float | None = None,
               cross: str | None = None, context_dim: int | None = None,
               context_mlp: str | None = None, head_dim: int | None = None,
               qkv_bias: bool = True, out_bias: bool = True, qk_norm: str | None = None,
               qk_norm_eps: float = 1e-5, qk_norm_affine: bool = False,
               qk_norm_bias: bool = False, rope: str | None = None, rope_theta: float = 10000.0,
               scale: float | None = None, implementation=None, qkv_init=None, out_init=None,
               mlp_init=None, dropout: float = 0.0, attn_dropout: float = 0.0, dtype=jnp.float32,
               qkv_clip: float | None = None, rngs: nnx.Rngs):
    for name, rate in (("dropout", dropout), ("attn_dropout", attn_dropout)):
      if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate < 1.0:
        raise ValueError(f"{name} must be a rate in [0, 1), got {rate!r}")
    self.dropout, self.attn_dropout = float(dropout), float(attn_dropout)
    if adaln and post_norm:
      raise ValueError("AdaLN modulates a pre-norm block; post_norm=True cannot take it")
    if layerscale is not None and post_norm:
      raise ValueError(f"LayerScale scales pre-norm branches; post_norm=True cannot take it "
                       f"(layerscale={layerscale!r})")
    if cross not in (None,) + CROSS_ORDERS:
      raise ValueError(f"cross must be None or one of {CROSS_ORDERS}, got {cross!r}")
    if cross is not None and post_norm:
      raise ValueError(f"cross-attention is a pre-norm branch; post_norm=True cannot take it "
                       f"(cross={cross!r})")
    if cross == "ada" and (not adaln or (cond_dim or width) != width):
      raise ValueError(f"cross='ada' adds the cross-attention output to the AdaLN condition: it "
                       f"needs adaln=True and cond_dim = width {width}, got adaln={adaln}, "
                       f"cond_dim={cond_dim}")
    if cross is None and (context_dim is not None or context_mlp is not None):
      raise ValueError(f"context_dim / context_mlp need cross, got context_dim={context_dim!r}, "
                       f"context_mlp={context_mlp!r}")
    self.post_norm, self.ada_segments, self.width = post_norm, ada_segments, width
    self.cross = cross
    make_norm = lambda: Norm(width, kind=norm, eps=norm_eps, affine=norm_affine, dtype=dtype,
                             rngs=rngs)
    self.norm1 = make_norm()
    self.attn = Attention(width, num_heads, head_dim=head_dim, qkv_bias=qkv_bias,
                          out_bias=out_bias, qk_norm=qk_norm, qk_norm_eps=qk_norm_eps,
                          qk_norm_affine=qk_norm_affine, qk_norm_bias=qk_norm_bias, rope=rope,
                          rope_theta=rope_theta, scale=scale, implementation=implementation,
                          dtype=dtype, qkv_init=qkv_init, out_init=out_init, qkv_clip=qkv_clip,
                          rngs=rngs)
    self.norm2 = make_norm()
    self.mlp = Mlp(width, mlp_hidden, kind=mlp, use_bias=mlp_bias, dtype=dtype,
                   kernel_init=mlp_init, rngs=rngs)
    self.ada = Dense(cond_dim or width, ada_segments * 6 * width, ("embed", "mlp"),
                     kernel_init=nnx.initializers.zeros, dtype=dtype,
                     rngs=rngs) if adaln else None
    make_ls = lambda: nnx.Param(logical_init(nnx.initializers.constant(float(layerscale)), "embed")(
        rngs.params(), (width,), jnp.float32))
    self.ls1 = make_ls() if layerscale is not None else None
    self.ls2 = make_ls() if layerscale is not None else None
    # Created last, so a block without cross draws the same parameters as before it existed.
    wc = context_dim or width
    self.norm_c = make_norm() if cross is not None else None
    self.cross_attn = Attention(
        width, num_heads, cross=True, context_dim=wc, head_dim=head_dim, qkv_bias=qkv_bias,
        out_bias=out_bias, qk_norm=qk_norm, qk_norm_eps=qk_norm_eps, qk_norm_affine=qk_norm_affine,
        qk_norm_bias=qk_norm_bias, rope=rope, rope_theta=rope_theta, scale=scale,
        implementation=implementation, dtype=dtype, qkv_init=qkv_init, out_init=out_init,
        qkv_clip=qkv_clip, rngs=rngs) if cross is not None else None
    self.context_mlp = Mlp(wc, wc, kind=context_mlp, use_bias=mlp_bias, dtype=dtype,
                           kernel_init=mlp_init, rngs=rngs) if context_mlp is not None else None
    self.norm_ctx = Norm(wc, kind=norm, eps=norm_eps, affine=norm_affine, dtype=dtype,
                         rngs=rngs) if context_mlp is not None else None

  @staticmethod
  def _scale(ls, y):
    return y if ls is None else y * ls.get_value().astype(y.dtype)

  def modulation(self, cond: jax.Array | None, segments: Sequence[int] | None, length: int):
    """The six modulations (gate_msa, gate_mlp, shift_msa, scale_msa, shift_mlp, scale_mlp), each
    [B, T, W] in the compute dtype, from cond [B, C] (per segment: `segments` lengths summing to
    T = length, None = one) or [B, T, C]; None for a block without AdaLN (then cond must be None)."""
    if self.ada is None:
      if cond is not None:
        raise ValueError("cond given to a block built without adaln")
      return None
    if cond is None:
      raise ValueError("an AdaLN block needs cond [B, C] or [B, T, C]")
    if cond.ndim == 3:  # one condition per position: the same Dense on each
      if cond.shape[1] != length or segments is not None or self.ada_segments != 1:
        raise ValueError(f"cond [B, T, C] needs T = the sequence length {length}, no segments and "
                         f"ada_segments 1, got cond {tuple(cond.shape)}, segments {segments}, "
                         f"ada_segments {self.ada_segments}")
      return jnp.split(self.ada(jax.nn.silu(cond)), 6, axis=-1)
    segments = tuple(segments) if segments is not None else (length,)
    if len(segments) != self.ada_segments or sum(segments) != length:
      raise ValueError(f"segments must be {self.ada_segments} lengths summing to the sequence "
                       f"length {length}, got {segments}")
    mod = self.ada(jax.nn.silu(cond)).reshape(cond.shape[0], self.ada_segments, 6 * self.width)
    mod = jnp.repeat(mod, np.asarray(segments), axis=1, total_repeat_length=length)
    return jnp.split(mod, 6, axis=-1)

  def _context(self, context: jax.Array | None) -> jax.Array | None:
    """The context as this block's cross-attention reads it (checked; per-block map if any)."""
    if self.cross is None:
      if context is not None:
        raise ValueError("context given to a block built without cross")
      return None
    if context is None:
      raise ValueError(f"a block with cross={self.cross!r} needs context [B, S, Wc]")
    if self.context_mlp is not None:
      context = self.norm_ctx(self.context_mlp(context))
    return context

  def _mlp(self, h: jax.Array, keys) -> jax.Array:
    """The MLP branch; keys: None, or two keys for the hidden and output dropout."""
    if keys is None:
      return self.mlp(h)
    return dropout(self.mlp(h, dropout_rate=self.dropout, dropout_rng=keys[0]), self.dropout,
                   keys[1])

  def _run(self, x: jax.Array, attend: Callable, cond, segments, cross: Callable | None = None,
           mlp_keys=None, modulation=None):
    """The residual branches around attend(h) -> (y, extra) (and cross(h) -> y, the cross branch;
    mlp_keys: the MLP's dropout keys); returns (x, extra)."""
    if self.post_norm:
      y, extra = attend(x)
      x = self.norm1(x + y)
      x = self.norm2(x + self._mlp(x, mlp_keys))
      return sharding.constrain(x, ("act_batch", "act_seq", "act_embed")), extra
    if self.cross == "ada":  # D-AR: the cross output joins the condition, one per position
      if cond is None or segments is not None:
        raise ValueError(f"cross='ada' needs cond [B, C] or [B, T, C] and no segments, got cond "
                         f"{None if cond is None else tuple(cond.shape)}, segments {segments}")
      s = cross(self.norm_c(x))
      cond = (cond[:, None] if cond.ndim == 2 else cond) + s
    mods = (self.modulation(cond, segments, x.shape[1]) if modulation is None
            else list(modulation))
    h = self.norm1(x)
    if mods is not None:
      g_msa, g_mlp, sh_msa, sc_msa, sh_mlp, sc_mlp = mods
      h = h * (1 + sc_msa) + sh_msa
    y, extra = attend(h)
    y = self._scale(self.ls1, y)
    x = x + (y if mods is None else g_msa * y)
    if self.cross == "residual":
      x = x + cross(self.norm_c(x))
    h = self.norm2(x)
    if mods is not None:
      h = h * (1 + sc_mlp) + sh_mlp
    y = self._scale(self.ls2, self._mlp(h, mlp_keys))
    x = x + (y if mods is None else g_mlp * y)
    return sharding.constrain(x, ("act_batch", "act_seq", "act_embed")), extra

  def __call__(self, x: jax.Array, *, mask: jax.Array | None = None, causal: bool = False,
               positions: jax.Array | None = None, cond: jax.Array | None = None,
               segments: Sequence[int] | None = None, context: jax.Array | None = None,
               context_mask: jax.Array | None = None,
               context_positions: jax.Array | None = None,
               dropout_rng: jax.Array | None = None, prefix: jax.Array | None = None,
               attn_pos: jax.Array | None = None) -> jax.Array:
    """x [B, T, W]; mask/causal/positions as `Attention`; cond [B, C] (with segments) or [B, T, C]
    for AdaLN; context [B, S, Wc] (with context_mask over its positions, broadcastable to
    [B, H, T, S], and context_positions for RoPE) for a cross block; dropout_rng: a key turns on
    the block's dropout (training), None is the deterministic pass; prefix [B, P, W] (extra keys,
    `mask` over P + T keys) and attn_pos [T, W] / [B, T, W]: see the module docstring."""
    context = self._context(context)
    keys = None
    if dropout_rng is not None and (self.dropout > 0 or self.attn_dropout > 0):
      keys = jax.random.split(dropout_rng, 4)

    def attend(h):
      if attn_pos is not None:
        h = h + attn_pos.astype(h.dtype)
      # Queries from h only; keys and values over [prefix; h] with the same weights.
      ctx = None if prefix is None else jnp.concatenate([prefix.astype(h.dtype), h], axis=1)
      if keys is None:
        return self.attn(h, mask=mask, causal=causal, positions=positions, context=ctx), None
      y = self.attn(h, mask=mask, causal=causal, positions=positions, context=ctx,
                    dropout_rate=self.attn_dropout, dropout_rng=keys[0])
      return dropout(y, self.dropout, keys[1]), None

    cross = lambda h: self.cross_attn(h, mask=context_mask, positions=positions, context=context,
                                      context_positions=context_positions)
    return self._run(x, attend, cond, segments, cross, None if keys is None else keys[2:])[0]

  def init_cache(self, batch: int, length: int, dtype=None, *, context: jax.Array | None = None,
                 context_positions: jax.Array | None = None) -> KVCache | CrossCache:
    """The self-attention's zeroed cache of `length` slots; for a cross block a `CrossCache` that
    also holds the context's keys/values (computed here, once)."""
    self_kv = self.attn.init_cache(batch, length, dtype)
    context = self._context(context)
    if context is None:
      return self_kv
    return CrossCache(self_kv, self.cross_attn.context_kv(context, dtype=dtype,
                                                          context_positions=context_positions))

  def extend(self, x: jax.Array, cache: KVCache | CrossCache, start, *,
             mask: jax.Array | None = None, positions: jax.Array | None = None,
             cond: jax.Array | None = None, segments: Sequence[int] | None = None,
             causal: bool = True, context_mask: jax.Array | None = None,
             attn_pos: jax.Array | None = None, modulation: Sequence[jax.Array] | None = None):
    """The block over x [B, T, W] at cache slots start..start+T-1 (see `Attention.extend`); a cross
    block takes the `CrossCache` of `init_cache(..., context=)` and attends to its fixed context
    keys/values; attn_pos [T, W] / [B, T, W] as in `__call__`; modulation: the six AdaLN
    modulations as `modulation(cond, ...)` returns them, computed beforehand (then cond is not
    read; RAR computes a sampling segment's at once). Returns (y [B, T, W], new cache)."""
    if (self.cross is not None) != isinstance(cache, CrossCache):
      raise ValueError(f"a block with cross={self.cross!r} needs "
                       f"{'a CrossCache from init_cache(..., context=)' if self.cross else 'a KVCache'}"
                       f", got {type(cache).__name__}")
    self_kv = cache.self_kv if self.cross is not None else cache
    shift = (lambda h: h) if attn_pos is None else (lambda h: h + attn_pos.astype(h.dtype))
    attend = lambda h: self.attn.extend(shift(h), self_kv, start, mask=mask, positions=positions,
                                        causal=causal)
    if modulation is not None:
      if self.ada is None or self.cross == "ada" or len(modulation) != 6:
        raise ValueError("modulation needs an AdaLN block (not cross='ada') and the six "
                         f"modulations, got {'no adaln' if self.ada is None else len(modulation)}")
    if self.cross is None:
      return self._run(x, attend, cond, segments, modulation=modulation)
    if positions is None and self.cross_attn.rope == "1d":
      positions = start + jnp.arange(x.shape[1])
    cross = lambda h: self.cross_attn.attend_context(h, cache.context, mask=context_mask,
                                                     positions=positions)
    y, self_kv = self._run(x, attend, cond, segments, cross, modulation=modulation)
    return y, CrossCache(self_kv, cache.context)
