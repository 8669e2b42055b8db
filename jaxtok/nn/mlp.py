"""The transformer MLP: GELU (ViT / open_clip), QuickGELU (OpenAI CLIP) or SwiGLU (Llama / FlexTok).

  gelu:   down(gelu(up(x)))                       up [W, M], down [M, W]
  quick_gelu: down(h * sigmoid(1.702 h)), h = up(x)   (OpenAI CLIP's activation)
  gelu_tanh: down(gelu_tanh(up(x)))               (diffusers' "gelu-approximate": MM-DiT / MaskGen)
  swiglu: down(silu(gate(x)) * up(x))             gate, up [W, M], down [M, W]
  geglu:  down(gelu_tanh(gate(x)) * up(x))        (T5 v1.1 / Flan-T5 "gated-gelu": wi_0, wi_1, wo)
  silu:   down(silu(up(x)))                       (timm Mlp(act_layer=nn.SiLU): D-AR's decoder)
GELU is exact (erf) unless approximate=True. Matmuls run in the compute dtype.

Dimension names: W width, M hidden width.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtok.nn.attention import dropout
from jaxtok.nn.dense import Dense

KINDS = ("gelu", "swiglu", "quick_gelu", "gelu_tanh", "geglu", "silu")


class Mlp(nnx.Module):
  """[..., W] -> [..., W] through M hidden units; kernels named ("embed", "mlp") / ("mlp", "embed")."""

  def __init__(self, width: int, hidden: int, *, kind: str = "gelu", use_bias: bool = True,
               approximate: bool = False, dtype=jnp.float32, kernel_init=None, rngs: nnx.Rngs):
    if kind not in KINDS:
      raise ValueError(f"mlp kind must be one of {KINDS}, got {kind!r}")
    self.kind, self.approximate = kind, approximate
    dense = lambda i, o, names: Dense(i, o, names, use_bias=use_bias, dtype=dtype,
                                      kernel_init=kernel_init, rngs=rngs)
    self.gate = dense(width, hidden, ("embed", "mlp")) if kind in ("swiglu", "geglu") else None
    self.up = dense(width, hidden, ("embed", "mlp"))
    self.down = dense(hidden, width, ("mlp", "embed"))

  def __call__(self, x: jax.Array, *, dropout_rate: float = 0.0,
               dropout_rng: jax.Array | None = None) -> jax.Array:
    """x [..., W] -> [..., W]; with dropout_rate > 0 and a key, dropout on the hidden activation
    (timm Mlp's drop1; the caller drops the output)."""
    if self.kind == "swiglu":
      h = jax.nn.silu(self.gate(x)) * self.up(x)
    elif self.kind == "quick_gelu":
      h = self.up(x)
      h = h * jax.nn.sigmoid(1.702 * h)
    elif self.kind == "geglu":
      h = jax.nn.gelu(self.gate(x), approximate=True) * self.up(x)
    elif self.kind == "silu":
      h = jax.nn.silu(self.up(x))
    else:
      h = jax.nn.gelu(self.up(x), approximate=self.approximate or self.kind == "gelu_tanh")
    if dropout_rate > 0 and dropout_rng is not None:
      h = dropout(h, dropout_rate, dropout_rng)
    return self.down(h)
