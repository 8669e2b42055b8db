"""A stack of identical `Block`s: unrolled or scanned over layers, with a remat policy.

scan_layers=False keeps `blocks` as a list (parameters blocks.0.*, blocks.1.*, ...); True creates the
blocks with `nnx.vmap` so every parameter gains a leading layer axis [L, ...] (logical name
"layers") and runs them with one `jax.lax.scan` (one block compiled instead of L). Both give the
same outputs and gradients for the same weights (tested); the scanned parameters are the unrolled
ones stacked along a new first axis.

remat ("none" | "full" | "dots", or a bool: True = "full") recomputes each block's activations in
the backward pass: "full" saves only the block inputs, "dots" also saves the results of matmuls
without batch dimensions (the weight matmuls, not attention scores), trading memory for less
recompute. Gradients are the same with every policy (tested).

The KV cache of an unrolled stack is a tuple of per-layer `KVCache`s (k, v [B, H, S, E]), each
updated in place; a scanned stack's is one `KVCache` with k, v [L, B, H, S, E], scanned with the
blocks. Callers treat it as an opaque pytree from `init_cache`. Blocks with cross-attention take
`context=` (and `context_mask=`, `context_positions=`) like any other keyword, passed to every
block (scanned or not, under any remat policy); their caches are `block.CrossCache`s, made by
`init_cache(batch, length, context=...)`, which computes every layer's context keys/values once.

`Stack(x, capture=k)` also returns the hidden state after the first k blocks (1 <= k <= L), for
losses on intermediate features (REPA, GigaTok's semantic regularisation); a scanned stack then runs
two scans, over layers [0, k) and [k, L). `capture="all"` returns every block's output stacked,
[L, B, T, W] (entry i after block i + 1; a scanned stack emits them from its one scan).

Dimension names: L layers, B batch, T sequence, S cache length, W width, H heads, E head dim.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtok import sharding
from jaxtok.nn.attention import KVCache
from jaxtok.nn.block import Block

REMAT_POLICIES = ("none", "full", "dots")
_POLICY = {"full": None, "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


def check_remat(remat: Any) -> str:
  """The policy name of `remat` (a name or a bool)."""
  if isinstance(remat, bool):
    return "full" if remat else "none"
  if remat not in REMAT_POLICIES:
    raise ValueError(f"remat must be one of {REMAT_POLICIES} (or a bool), got {remat!r}")
  return remat


def remat_call(module: nnx.Module, x: jax.Array, *, remat: Any = "none", **kwargs) -> jax.Array:
  """module(x, **kwargs) under a remat policy, for modules outside a `Stack` (a U-Net of blocks with
  long skips, a convolutional encoder or decoder as one unit)."""
  policy = check_remat(remat)
  graphdef, state = nnx.split(module)
  run = lambda state, x: nnx.merge(graphdef, state)(x, **kwargs)
  if policy != "none":
    run = jax.checkpoint(run, policy=_POLICY[policy])
  return run(state, x)


def _call(block: Block, x, cache, start, kwargs):
  if cache is None:
    return block(x, **kwargs), None
  return block.extend(x, cache, start, **kwargs)


class Stack(nnx.Module):
  """`depth` blocks made by make_block(rngs): x [B, T, W] -> [B, T, W].

  Args:
    depth: L.
    make_block: rngs -> Block (called once per layer; under scan_layers inside nnx.vmap).
    scan_layers: scan over stacked blocks instead of a Python loop.
    remat: "none" | "full" | "dots" (or a bool).
  """

  def __init__(self, depth: int, make_block: Callable[[nnx.Rngs], Block], *,
               scan_layers: bool = False, remat: Any = "none", rngs: nnx.Rngs):
    if depth < 1:
      raise ValueError(f"depth must be >= 1, got {depth}")
    self.depth, self.scan_layers, self.remat = depth, bool(scan_layers), check_remat(remat)
    if self.scan_layers:
      @nnx.split_rngs(splits=depth)
      @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
      def make(r):
        return make_block(r)
      self.blocks = make(rngs)
    else:
      self.blocks = nnx.List([make_block(rngs) for _ in range(depth)])

  def _layer_fn(self, graphdef, kwargs, start):
    """(state, x, cache, rng) -> (x, cache) of one block, rematerialised by the policy; rng: the
    layer's dropout key or None."""

    def run(state, x, cache, rng):
      kw = kwargs if rng is None else dict(kwargs, dropout_rng=rng)
      return _call(nnx.merge(graphdef, state), x, cache, start, kw)

    if self.remat == "none":
      return run
    return jax.checkpoint(run, policy=_POLICY[self.remat])

  def _apply(self, x, cache, start, kwargs, capture=None):
    """(x, cache) after all blocks, plus the hidden state after block `capture` when given (every
    block's output stacked [L, ...] for capture "all"). A `dropout_rng` in kwargs gives layer i the
    key fold_in(dropout_rng, i) (scanned or not)."""
    x = sharding.constrain(x, ("act_batch", "act_seq", "act_embed"))
    kwargs = dict(kwargs)
    drop = kwargs.pop("dropout_rng", None)
    layer_rng = lambda i: None if drop is None else jax.random.fold_in(drop, i)
    hidden = None
    if self.scan_layers:
      graphdef, state = nnx.split(self.blocks)
      run = self._layer_fn(graphdef, kwargs, start)
      body = lambda x, layer: run(layer[0], x, layer[1], layer_rng(layer[2]))
      index = jnp.arange(self.depth)
      if capture == "all":  # each layer's output is also the scan's per-layer result
        x, (cache, hidden) = jax.lax.scan(
            lambda x, layer: (lambda y, c: (y, (c, y)))(*body(x, layer)), x, (state, cache, index))
        return x, cache, hidden
      if capture is None:
        return jax.lax.scan(body, x, (state, cache, index)) + (None,)
      # No cache here (training only): the layers [0, capture) and [capture, L) as two scans.
      part = lambda lo, hi: jax.tree.map(lambda a: a[lo:hi], state)
      hidden, _ = jax.lax.scan(body, x, (part(0, capture), None, index[:capture]))
      x = hidden
      if capture < self.depth:
        x, _ = jax.lax.scan(body, x, (part(capture, self.depth), None, index[capture:]))
      return x, None, hidden
    caches, outputs = [], []
    for i, block in enumerate(self.blocks):
      graphdef, state = nnx.split(block)
      x, layer_cache = self._layer_fn(graphdef, kwargs, start)(
          state, x, None if cache is None else cache[i], layer_rng(i))
      caches.append(layer_cache)
      outputs.append(x)
      if capture == i + 1:
        hidden = x
    if capture == "all":
      hidden = jnp.stack(outputs)
    return x, None if cache is None else tuple(caches), hidden

  def __call__(self, x: jax.Array, *, capture: int | str | None = None, **kwargs):
    """x [B, T, W]; keyword arguments (mask, causal, positions, cond, segments, context,
    context_mask, context_positions) go to every block.

    Returns [B, T, W]; with capture=k (1 <= k <= L) the pair (output, hidden state after block k);
    with capture="all" the pair (output, every block's output [L, B, T, W]).
    """
    if capture is None:
      return self._apply(x, None, None, kwargs)[0]
    if capture != "all" and (isinstance(capture, bool) or not isinstance(capture, int)
                             or not 1 <= capture <= self.depth):
      raise ValueError(f"capture must be an int in [1, {self.depth}] (a block count) or 'all', got "
                       f"{capture!r}")
    out, _, hidden = self._apply(x, None, None, kwargs, capture)
    return out, hidden

  def init_cache(self, batch: int, length: int, dtype=None, *, context: jax.Array | None = None,
                 context_positions: jax.Array | None = None) -> Any:
    """Zeroed caches of `length` slots: per layer k, v [batch, H, length, E] (stacked when scanned);
    with context [B, S, Wc] (cross blocks) per layer a `CrossCache` that also holds the context's
    keys/values [B, H, S, E], computed here once."""
    kw = dict(context=context, context_positions=context_positions)
    if context is not None and self.scan_layers:  # each layer's projection of the one context
      graphdef, state = nnx.split(self.blocks)
      return jax.vmap(lambda s: nnx.merge(graphdef, s).init_cache(batch, length, dtype, **kw))(state)
    if context is not None:
      return tuple(block.init_cache(batch, length, dtype, **kw) for block in self.blocks)
    if self.scan_layers:
      attn = self.blocks.attn
      shape = (self.depth, batch, attn.num_heads, length, attn.head_dim)
      dt = dtype or attn.dtype
      return KVCache(jnp.zeros(shape, dt), jnp.zeros(shape, dt))
    return tuple(block.attn.init_cache(batch, length, dtype) for block in self.blocks)

  def extend(self, x: jax.Array, cache, start, **kwargs):
    """Every block's `extend` at slots start..start+T-1: (x [B, T, W], new cache)."""
    return self._apply(x, cache, start, kwargs)[:2]

