"""OLMo (v1; Groeneveld et al. 2024) as a frozen text tower: every layer's hidden state.

Instella-T2I conditions each of its DiT blocks on one layer of the causal LM `amd/AMD-OLMo-1B`
(HF `OlmoForCausalLM`): `llm(**text_inputs, output_hidden_states=True).hidden_states[1:]`. This is
HF transformers' `models/olmo/modeling_olmo.py` (4.57.6) composed from the shared parts:

  ids int32 [B, T] -> embed [V, W] (no scaling, no positional table)
  -> L pre-norm Blocks: LayerNorm WITHOUT weight or bias (eps 1e-5, statistics in float32),
     q/k/v/o projections without biases (`attention_bias` False in every released OLMo v1),
     q, k, v clamped to [-clip_qkv, clip_qkv] when `clip_qkv` is set (before RoPE), RoPE with
     HF's `rotate_half` convention (channel i pairs with i + E/2: `nn.rope`'s "1d") at base
     `rope_theta`, causal attention plus the padding mask, SwiGLU MLP down(silu(gate x) * up x)
  -> final LayerNorm (no parameters).

What `output_hidden_states` returns (transformers 4.57.6, `utils.generic.check_model_inputs`): the
input of the first decoder layer (the embeddings), then every decoder layer's output, L + 1
tensors, the last one REPLACED by `last_hidden_state`, i.e. after the final norm. So
`hidden_states[1:]` (what the release feeds its L DiT blocks) is, for l = 1..L-1, the residual
stream after block l (not normalised), and for l = L the final norm of the last block's output.
`hidden_states_fn` returns exactly these L tensors, float32 [L, B, T, W].

Positions: OlmoModel.forward without `position_ids` takes `cache_position.unsqueeze(0)` =
arange(T) for every row, whatever the attention mask; the release calls the LM that way with
LEFT-padded batches, so a row's first real token sits at position (number of pads), not 0. We do
the same (RoPE positions 0..T-1 for every row). Since RoPE makes q.k depend only on position
differences and real queries never see pads, the real positions' features do not depend on that
offset anyway (up to rounding).

Padded positions: the release masks them out downstream (the DiT's joint attention mask). A padded
query of a left-padded row sees no key (its causal keys are all pads); `nn.attention` then gives it
uniform weights over all T keys, as HF's eager attention does (its additive mask puts the most
negative float on every key): finite values, equal to HF eager's to rounding (tested against the
fixture). HF's sdpa path returns other finite values there (up to ~10 apart from eager's on the
fixture); the release's flash_attention_2 path (bf16) unpads the queries and writes zeros as the
attention output at padded positions (`_pad_input`). None of it reaches the generator.

`SIZES["amd-olmo-1b"]` is AMD-OLMo-1B's config.json (as mirrored by onnx-community/AMD-OLMo-1B,
`_name_or_path` amd/AMD-OLMo-1B; identical to amd/AMD-OLMo-1B-SFT's): hidden 2048, 16 layers, 16
heads (16 kv heads), intermediate 8192, vocab 50304, rope_theta 10000, clip_qkv null,
attention_bias false, hidden_act silu, tie_word_embeddings true, pad id 1, eos 50279. The release
implies hidden 2048 (`text_cond_dim = llm.config.hidden_size`, DiT default 2048) and 16 layers
(`num_layers = llm.config.num_hidden_layers`, one per DiT block); the other fields were not checked
against the amd/AMD-OLMo-1B files themselves (jaxtok never downloads them).

Dimension names: B batch, T tokens, V vocabulary, W width, L layers, H heads, E head dim, M MLP
hidden width.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtok.nn import options
from jaxtok.nn.block import Block
from jaxtok.nn.norm import Norm
from jaxtok.nn.stack import Stack
from jaxtok.sharding import logical_init

# name -> (width, depth, heads, MLP hidden, vocab, rope theta)
SIZES = {"amd-olmo-1b": (2048, 16, 16, 8192, 50304, 10000.0)}
_EPS = 1e-5  # OlmoLayerNorm's eps is fixed in HF's code (not a config field)


class Olmo(nnx.Module):
  """ids int32 [B, T] (+ mask int32 [B, T], 1 = real token) -> hidden states float32 [L, B, T, W].

  Args:
    width, depth, num_heads, mlp_hidden, vocab_size: W, L, H, M, V (HF hidden_size,
      num_hidden_layers, num_attention_heads, intermediate_size, vocab_size).
    rope_theta: the RoPE base.
    clip_qkv: None, or the clamp of q, k, v (HF `clip_qkv`).
    attention_bias: biases on q/k/v/o (HF `attention_bias`; False in the released models).
    dtype, remat, scan_layers, attention_impl: `nn.options`.
  """

  def __init__(self, *, width: int = 2048, depth: int = 16, num_heads: int = 16,
               mlp_hidden: int = 8192, vocab_size: int = 50304, rope_theta: float = 10000.0,
               clip_qkv: float | None = None, attention_bias: bool = False, dtype: Any = jnp.float32,
               remat: Any = "none", scan_layers: bool = False, attention_impl: Any = None,
               rngs: nnx.Rngs):
    for name, v in (("width", width), ("depth", depth), ("num_heads", num_heads),
                    ("mlp_hidden", mlp_hidden), ("vocab_size", vocab_size)):
      if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"Olmo {name} must be an int >= 1, got {v!r}")
    if width % num_heads or (width // num_heads) % 2:
      raise ValueError(f"Olmo width must split into num_heads heads of an even dim (RoPE), got "
                       f"width {width}, num_heads {num_heads}")
    if not rope_theta > 0:
      raise ValueError(f"Olmo rope_theta must be > 0, got {rope_theta!r}")
    self.vocab_size, self.depth, self.dtype = vocab_size, depth, dtype
    # HF's init: normal(0, initializer_range 0.02) for the table and every Linear.
    init = nnx.initializers.normal(0.02)
    self.embed = nnx.Param(logical_init(init, "vocab", "embed")(
        rngs.params(), (vocab_size, width), jnp.float32))
    block = lambda r: Block(
        width, num_heads, mlp_hidden=mlp_hidden, mlp="swiglu", mlp_bias=False, norm="layer",
        norm_eps=_EPS, norm_affine=False, qkv_bias=attention_bias, out_bias=attention_bias,
        rope="1d", rope_theta=float(rope_theta), qkv_clip=clip_qkv, qkv_init=init, out_init=init,
        mlp_init=init, implementation=attention_impl, dtype=dtype, rngs=r)
    self.layers = Stack(depth, block, scan_layers=scan_layers, remat=remat, rngs=rngs)
    self.norm = Norm(width, kind="layer", eps=_EPS, affine=False, dtype=dtype, rngs=rngs)

  def __call__(self, ids: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """ids int [B, T] in [0, V); mask None (all real) or int/bool [B, T] (nonzero = real token).

    Returns float32 [L, B, T, W]: HF's `hidden_states[1:]` (module docstring).
    """
    if not hasattr(ids, "ndim") or ids.ndim != 2 or not jnp.issubdtype(ids.dtype, jnp.integer):
      raise ValueError(f"ids must be int [B, T], got {getattr(ids, 'dtype', type(ids).__name__)} "
                       f"{getattr(ids, 'shape', '')}")
    if ids.shape[1] < 1:
      raise ValueError(f"ids must hold at least one token per row, got shape {tuple(ids.shape)}")
    keys = None
    if mask is not None:
      if not hasattr(mask, "shape") or tuple(mask.shape) != tuple(ids.shape):
        raise ValueError(f"mask must be [B, T] = {tuple(ids.shape)} like ids, got "
                         f"{tuple(getattr(mask, 'shape', ())) or type(mask).__name__}")
      keys = (jnp.asarray(mask) != 0)[:, None, None, :]  # [B, 1, 1, T]: which keys are real
    x = jnp.take(self.embed.get_value(), ids, axis=0).astype(self.dtype)
    # Positions default to 0..T-1 for every row, as HF's forward without position_ids.
    _, hidden = self.layers(x, capture="all", mask=keys, causal=True)
    hidden = hidden.at[-1].set(self.norm(hidden[-1]))  # the last entry is HF's last_hidden_state
    return hidden.astype(jnp.float32)


_FIELDS = ("width", "depth", "num_heads", "mlp_hidden", "vocab_size", "rope_theta", "clip_qkv",
           "attention_bias")


def config_for(size: str, **overrides: Any) -> dict[str, Any]:
  """The config of a released tower ("amd-olmo-1b"), plus overrides."""
  if size not in SIZES:
    raise ValueError(f"OLMo size must be one of {sorted(SIZES)}, got {size!r}")
  w, d, h, m, v, theta = SIZES[size]
  return {**dict(width=w, depth=d, num_heads=h, mlp_hidden=m, vocab_size=v, rope_theta=theta),
          **overrides}


# make_model(cfg, *, rngs) -> Olmo from plain fields (`_FIELDS`, `size` for a preset, the common
# options; unknown keys raise ValueError); abstract_params(cfg): its parameter shapes, unallocated.
make_model, abstract_params = options.tower_builders(Olmo, _FIELDS, model="Olmo",
                                                     preset=lambda size, kw: config_for(size))


def hidden_states_fn(cfg: Mapping[str, Any]):
  """fn(params, ids int32 [B, T], mask int32 [B, T]) -> float32 [L, B, T, W], HF's
  `hidden_states[1:]` of `make_model(cfg)` holding `params` (frozen use: jit-friendly, the
  parameters are only read)."""
  return options.frozen_apply(make_model, cfg)
