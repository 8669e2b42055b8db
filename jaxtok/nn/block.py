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

The block's output is pinned to (act_batch, act_seq, act_embed).

Dimension names: B batch, T sequence, W width, C condition width.
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxtok import sharding
from jaxtok.nn.attention import Attention, KVCache
from jaxtok.nn.dense import Dense
from jaxtok.nn.mlp import Mlp
from jaxtok.nn.norm import Norm
from jaxtok.sharding import logical_init


class Block(nnx.Module):
  """x [B, T, W] -> [B, T, W] in the compute dtype.

  Args:
    width, num_heads: W and H.
    mlp_hidden: MLP hidden width M; mlp: an `Mlp` kind ("gelu", "gelu_tanh", "quick_gelu",
      "swiglu"); mlp_bias: MLP biases.
    norm: "layer" or "rms"; norm_eps; norm_affine: learned scale (and bias for "layer").
    post_norm: BERT's post-norm order instead of pre-norm.
    adaln: add AdaLN-zero modulation from a condition of width cond_dim (default W), with
      ada_segments modulations per sample.
    layerscale: None, or the initial value of the LayerScale vectors ls1, ls2 [W] (DINOv2: 1.0 in
      its released models, 1e-5 when training from scratch).
    head_dim, qkv_bias, out_bias, qk_norm, qk_norm_eps, qk_norm_affine, qk_norm_bias, rope,
      rope_theta, scale, implementation, qkv_init, out_init: passed to `Attention`. mlp_init: the
      MLP kernels' initializer.
    dtype: compute dtype (parameters float32).
  """

  def __init__(self, width: int, num_heads: int, *, mlp_hidden: int, mlp: str = "gelu",
               mlp_bias: bool = True, norm: str = "layer", norm_eps: float = 1e-5,
               norm_affine: bool = True, post_norm: bool = False, adaln: bool = False,
               cond_dim: int | None = None, ada_segments: int = 1, layerscale: float | None = None,
               head_dim: int | None = None,
               qkv_bias: bool = True, out_bias: bool = True, qk_norm: str | None = None,
               qk_norm_eps: float = 1e-5, qk_norm_affine: bool = False,
               qk_norm_bias: bool = False, rope: str | None = None, rope_theta: float = 10000.0,
               scale: float | None = None, implementation=None, qkv_init=None, out_init=None,
               mlp_init=None, dtype=jnp.float32, rngs: nnx.Rngs):
    if adaln and post_norm:
      raise ValueError("AdaLN modulates a pre-norm block; post_norm=True cannot take it")
    if layerscale is not None and post_norm:
      raise ValueError(f"LayerScale scales pre-norm branches; post_norm=True cannot take it "
                       f"(layerscale={layerscale!r})")
    self.post_norm, self.ada_segments, self.width = post_norm, ada_segments, width
    make_norm = lambda: Norm(width, kind=norm, eps=norm_eps, affine=norm_affine, dtype=dtype,
                             rngs=rngs)
    self.norm1 = make_norm()
    self.attn = Attention(width, num_heads, head_dim=head_dim, qkv_bias=qkv_bias,
                          out_bias=out_bias, qk_norm=qk_norm, qk_norm_eps=qk_norm_eps,
                          qk_norm_affine=qk_norm_affine, qk_norm_bias=qk_norm_bias, rope=rope,
                          rope_theta=rope_theta, scale=scale, implementation=implementation,
                          dtype=dtype, qkv_init=qkv_init, out_init=out_init, rngs=rngs)
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

  @staticmethod
  def _scale(ls, y):
    return y if ls is None else y * ls.get_value().astype(y.dtype)

  def _modulation(self, cond, segments: Sequence[int] | None, length: int):
    """Six [B, T, W] modulations from cond [B, C] or [B, T, C] (None without AdaLN)."""
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

  def _run(self, x: jax.Array, attend: Callable, cond, segments):
    """The residual branches around attend(h) -> (y, extra); returns (x, extra)."""
    if self.post_norm:
      y, extra = attend(x)
      x = self.norm1(x + y)
      x = self.norm2(x + self.mlp(x))
      return sharding.constrain(x, ("act_batch", "act_seq", "act_embed")), extra
    mods = self._modulation(cond, segments, x.shape[1])
    h = self.norm1(x)
    if mods is not None:
      g_msa, g_mlp, sh_msa, sc_msa, sh_mlp, sc_mlp = mods
      h = h * (1 + sc_msa) + sh_msa
    y, extra = attend(h)
    y = self._scale(self.ls1, y)
    x = x + (y if mods is None else g_msa * y)
    h = self.norm2(x)
    if mods is not None:
      h = h * (1 + sc_mlp) + sh_mlp
    y = self._scale(self.ls2, self.mlp(h))
    x = x + (y if mods is None else g_mlp * y)
    return sharding.constrain(x, ("act_batch", "act_seq", "act_embed")), extra

  def __call__(self, x: jax.Array, *, mask: jax.Array | None = None, causal: bool = False,
               positions: jax.Array | None = None, cond: jax.Array | None = None,
               segments: Sequence[int] | None = None) -> jax.Array:
    """x [B, T, W]; mask/causal/positions as `Attention`; cond [B, C] (with segments) or [B, T, C]
    for AdaLN."""
    attend = lambda h: (self.attn(h, mask=mask, causal=causal, positions=positions), None)
    return self._run(x, attend, cond, segments)[0]

  def extend(self, x: jax.Array, cache: KVCache, start, *, mask: jax.Array | None = None,
             positions: jax.Array | None = None, cond: jax.Array | None = None,
             segments: Sequence[int] | None = None,
             causal: bool = True) -> tuple[jax.Array, KVCache]:
    """The block over x [B, T, W] at cache slots start..start+T-1 (see `Attention.extend`)."""
    attend = lambda h: self.attn.extend(h, cache, start, mask=mask, positions=positions,
                                        causal=causal)
    return self._run(x, attend, cond, segments)
