"""Any-Subset Speculative Decoding (ASSD; "Reviving Any-Subset Autoregressive Models with Principled
Parallel Sampling and Speculative Decoding"), model-agnostic.

An any-subset AR model gives, for a generation order sigma, the chain p(x_sigma(i) | x_sigma(<i)) of
all positions in one teacher-forced pass, and p(x_j | x_C) for several positions j at once. Per
iteration, with the first c tokens of the order decoded (context C):
  1. draft (one call): the next k positions' conditionals q_l = p(x_sigma(c+l) | x_C), sampled
     independently (conditionally independent given the context);
  2. verify (one call): the chain with the drafts in place gives the joint's factors
     p_l = p(x_sigma(c+l) | x_C, drafts before l);
  3. accept drafts in order with probability min(1, p_l / q_l); at the first rejection draw from the
     residual (p_l - q_l)_+ normalised and stop (speculative sampling, `spectr.kseq_select` with one
     candidate). Draft 0 is always kept: q_0 is p_0.
So the output is exactly the model's sequential sample along sigma (tested against the enumerated
chain joint), and every iteration with >= 2 positions left decodes >= 2 tokens for 2 calls: the
number of model calls never exceeds the number of tokens (1 call when a single position is left).

Callables (R rows; B', the batch inside the per-sample vmap, is 1):
  ``draft_fn(seq int32 [R, N], order int32 [R, N], c int32 [R], cond) -> logits [R, k, V]``
  (query l: position order[c + l] given seq[:, :c]; its first query must be the chain's slot c);
  ``chain_fn(seq int32 [R, N], order int32 [R, N], cond) -> logits [R, N, V]`` (slot i:
  p(x_order[i] | seq[:, :i])). seq holds the tokens in generation order; cond is the sample's row of
  the ``cond`` pytree (or None), e.g. class ids (`jaxtok.generators.any_order.AnyOrderGPT`).

Keys: sample b uses key_b = fold_in(rng, b); the token at order index i, when drawn from the model's
own conditional (draft 0) or a residual, uses fold_in(key_b, i), so k = 1 is plain sequential
sampling along the order with those keys. Later drafts and the uniforms use fold_in(key_b, 2^31 - 1).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxtok.samplers import _checks, categorical, spectr


def sample(rng, draft_fn, chain_fn, orders, *, num_draft, cond=None, temperature=1.0, top_k=None,
           top_p=None):
  """ASSD over orders int32 [B, N] (a permutation of 0..N-1 per row), k = num_draft positions
  drafted per iteration. Returns (tokens int32 [B, N] in position layout, stats: dict of int32 [B]:
  "model_calls", "iterations", "accepted" (drafts after the first kept), "drafted" (drafts after the
  first offered)). temperature > 0, top-k and top-p apply to both the drafts and the chain."""
  k = _checks.positive_int("num_draft", num_draft)
  _checks.temperature(temperature, allow_zero=False)
  if jnp.ndim(orders) != 2:
    raise ValueError(f"orders must be [B, N], got shape {tuple(jnp.shape(orders))}")
  if _checks.is_concrete(orders):
    o = np.asarray(orders)
    if not np.array_equal(np.sort(o, 1), np.broadcast_to(np.arange(o.shape[1]), o.shape)):
      raise ValueError("orders must hold a permutation of 0..N-1 in every row")
  orders = jnp.asarray(orders, jnp.int32)
  b, n = orders.shape
  row = lambda x: jax.tree.map(lambda a: a[None], x)
  v = jax.eval_shape(lambda o, cd: chain_fn(o, o, cd), orders[:1],
                     None if cond is None else jax.tree.map(lambda a: a[:1], cond)).shape[-1]
  categorical.check_args(v, temperature=temperature, top_k=top_k, top_p=top_p)
  probs = lambda lg: spectr.filtered_probs(lg, temperature, top_k, top_p)

  def one(key, order, cd):
    aux = jax.random.fold_in(key, spectr.AUX_FOLD)
    cd = None if cd is None else row(cd)
    zero = jnp.int32(0)

    def body(carry):
      c, seq, stats = carry
      it_key = jax.random.fold_in(aux, stats["iterations"])
      left = jnp.minimum(k, n - c)
      dl = draft_fn(seq[None, :n], order[None], c[None], cd)[0]  # [k, V]
      ys = categorical.sample(it_key, dl, temperature=temperature, top_k=top_k, top_p=top_p)
      y0 = categorical.sample(jax.random.fold_in(key, c), dl[:1], temperature=temperature,
                              top_k=top_k, top_p=top_p)[0]
      ys = ys.at[0].set(y0)
      seq = jax.lax.dynamic_update_slice_in_dim(seq, ys, c, 0)
      tl = chain_fn(seq[None, :n], order[None], cd)[0]  # [N, V]
      pt = probs(jax.lax.dynamic_slice_in_dim(jnp.pad(tl, ((0, k), (0, 0))), c, k))  # [k, V]
      qd = probs(dl)
      uniforms = jax.random.uniform(jax.random.fold_in(it_key, 1), (k,))

      def verify(carry, l):
        done, m, seq, acc = carry
        tok, kept = spectr.kseq_select(uniforms[l][None], ys[l][None], jnp.ones((1,), bool), qd[l],
                                       pt[l], jax.random.fold_in(key, c + l))
        go = ~done & (l < left)
        seq = jnp.where(go, seq.at[c + l].set(tok), seq)
        return (done | (kept < 0), m + go, seq, acc + (go & (kept >= 0))), None

      (_, m, seq, acc), _ = jax.lax.scan(verify, (jnp.bool_(False), jnp.int32(1), seq, zero),
                                         jnp.arange(1, k))
      calls = 1 + (left > 1).astype(jnp.int32)  # a single position left needs no verification
      stats = dict(model_calls=stats["model_calls"] + calls, iterations=stats["iterations"] + 1,
                   accepted=stats["accepted"] + acc, drafted=stats["drafted"] + left - 1)
      return c + m, seq, stats

    stats = dict(model_calls=zero, iterations=zero, accepted=zero, drafted=zero)
    _, seq, stats = jax.lax.while_loop(lambda cr: cr[0] < n, body,
                                       (zero, jnp.zeros((n + k,), jnp.int32), stats))
    return jnp.zeros((n,), jnp.int32).at[order].set(seq[:n]), stats

  keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(b))
  return jax.vmap(one)(keys, orders, cond)
