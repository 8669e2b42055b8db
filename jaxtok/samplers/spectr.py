"""SpecTr speculative decoding (Sun et al. 2023, "SpecTr: Fast Speculative Decoding via Optimal
Transport"): k i.i.d. drafts of L tokens from a small draft model, verified by one target pass, with
the k-sequential draft selection (K-SEQ) so the output is exactly distributed as the target.

K-SEQ (the paper's Algorithm 2) for one token, drafts X_1..X_k i.i.d. ~ p, target q, rho in [1, k]:
  beta(rho) = sum_x min(p(x), q(x) / rho),   p_acc = 1 - (1 - beta)^k;
  for i = 1..k: accept X_i with probability min(1, q(X_i) / (rho p(X_i)));
  if all are rejected draw from the residual p_res(x) = (q(x) - min(p(x), q(x)/rho) p_acc / beta)
  / (1 - p_acc).
Every x is then output with probability q(x) whenever p_acc / beta <= rho (the residual is then
non-negative); rho* solves 1 - (1 - beta(rho))^k = rho beta(rho) (found by bisection on [1, k], keeping
the valid end). k = 1 gives rho = 1, the standard speculative-sampling rule min(1, q/p) with the
residual (q - p)_+ (tested).

Sequence level (the paper's SpecTr, Algorithm 3): the k drafts form a tree; at draft position l the
candidates are the drafts whose first l tokens equal the tokens output so far in this block (their
l-th tokens are i.i.d. draws of p(. | prefix) given the selection so far), K-SEQ picks the token, and
the block goes on while a draft still matches; after L matched tokens the target's distribution after
the whole draft gives one more token. Any target distribution along a matching draft is exact, so a
residual draw that happens to equal a draft token also continues the block.

Callables (a trunk's `extend`, e.g. ``GPT.net.extend`` = ``generators.trunk.TokenTrunk.extend``):
  ``extend_fn(ids int32 [R, T], start int32 scalar (traced), cache) -> (logits [R, T, V], cache)``:
  writes ids at sequence slots start..start+T-1 (the prompt first, then generated token t_i at slot
  P + i) and returns, at each slot s, logits for the token at slot s + 1.
The loop runs per sample (vmapped over the batch), with R = k rows: one cache row per draft. Each
cache (target and draft) is given for k rows and at least P + N + L slots; every cache leaf has its
row axis at ``cache_axis``. After a block the rows are re-synchronised by copying the row of the draft
that matched the kept tokens (entries past the kept prefix are rewritten before they are read).

Keys: sample b uses key_b = fold_in(rng, b); every token drawn from a target distribution (the first
token, residual draws, the bonus token) at generated index i uses fold_in(key_b, i) exactly as
`autoregressive.sample(key_b, ...)` does for one sample, so a draft that is always rejected gives the
plain sampler's tokens (tested). Drafts and acceptance uniforms use fold_in(key_b, 2^31 - 1).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxtok.samplers import _checks, categorical

AUX_FOLD = 2 ** 31 - 1  # fold_in index of the keys not tied to a token index


def _beta(p, q, rho):
  return jnp.sum(jnp.minimum(p, q / rho), -1)


def kseq_rho(p, q, k, *, iters: int = 40):
  """The K-SEQ division factor rho float32 scalar for draft p [V], target q [V] (probability
  vectors) and k candidates (int, may be traced, >= 1): the smallest rho in [1, k] found by bisection
  with 1 - (1 - beta(rho))^k <= rho beta(rho) (the validity condition of the residual)."""
  k = jnp.asarray(k, jnp.float32)
  excess = lambda rho: 1.0 - (1.0 - _beta(p, q, rho)) ** k - rho * _beta(p, q, rho)

  def bisect(_, lohi):
    lo, hi = lohi
    mid = 0.5 * (lo + hi)
    ok = excess(mid) <= 0
    return jnp.where(ok, lo, mid), jnp.where(ok, mid, hi)

  hi = jax.lax.fori_loop(0, iters, bisect, (jnp.float32(1.0), jnp.maximum(k, 1.0)))[1]
  # k = 1 (or p, q making rho = 1 valid) is the standard rule; the bisection would stop just above 1.
  return jnp.where((k <= 1) | (excess(jnp.float32(1.0)) <= 0), jnp.float32(1.0), hi)


def kseq_rule(p, q, k):
  """The K-SEQ rule for draft p [V], target q [V] (float32 probabilities) and k candidates.

  Returns (accept float32 [V]: min(1, q / (rho p)), the chance a candidate equal to x is kept (0
  where p = 0); residual float32 [V]: the distribution drawn from when all k are rejected).
  """
  p, q = jnp.asarray(p, jnp.float32), jnp.asarray(q, jnp.float32)
  rho = kseq_rho(p, q, k)
  beta = _beta(p, q, rho)
  kf = jnp.asarray(k, jnp.float32)
  # p_acc / beta = sum_{i<k} (1 - beta)^i -> k as beta -> 0.
  ratio = jnp.where(beta > 1e-12, (1.0 - (1.0 - beta) ** kf) / jnp.maximum(beta, 1e-12), kf)
  accept = jnp.where(p > 0, jnp.minimum(1.0, q / (rho * jnp.maximum(p, 1e-30))), 0.0)
  res = jnp.maximum(q - jnp.minimum(p, q / rho) * ratio, 0.0)
  total = jnp.sum(res)
  # total = 0 only when acceptance is certain (p_acc = 1); the residual is never drawn then.
  residual = jnp.where(total > 1e-12, res / jnp.maximum(total, 1e-30), q)
  return accept, residual


def kseq_select(uniforms, drafts, active, p, q, residual_key):
  """K-SEQ over the active candidates, in index order.

  uniforms float32 [k] in [0, 1); drafts int32 [k]: candidate tokens (i.i.d. ~ p where active);
  active bool [k]: the candidates taking part (at least one); p, q float32 [V]; residual_key: the key
  of the residual draw (`categorical.sample` on its logarithm, shape [1, V]).
  Returns (token int32, index int32 of the kept candidate or -1 for a residual draw).
  """
  accept, residual = kseq_rule(p, q, jnp.sum(active))
  ok = active & (uniforms < accept[drafts])
  j = jnp.argmax(ok).astype(jnp.int32)
  res_tok = categorical.sample(residual_key, jnp.log(residual)[None])[0]
  keep = jnp.any(ok)
  return jnp.where(keep, drafts[j], res_tok), jnp.where(keep, j, -1)


def filtered_probs(logits, temperature, top_k, top_p):
  """softmax(filter(logits / temperature)) float32 [..., V]: what `categorical.sample` draws from."""
  return jax.nn.softmax(categorical.filter_logits(logits / temperature, top_k=top_k, top_p=top_p), -1)


def _take_row(cache, row, axis):
  """Every leaf's row `row` along `axis`, broadcast back to all rows."""
  def take(x):
    r = jax.lax.dynamic_index_in_dim(x, row, axis, keepdims=True)
    return jnp.broadcast_to(r, x.shape)
  return jax.tree.map(take, cache)


def sample(rng, target_fn, target_cache, draft_fn, draft_cache, prompt_tokens, *, num_tokens,
           num_drafts, draft_len, temperature=1.0, top_k=None, top_p=None, cache_axis=0):
  """SpecTr sampling of num_tokens tokens after prompt_tokens int32 [B, P].

  target_fn / draft_fn and their caches: see the module docstring (caches for k = num_drafts rows
  and >= P + num_tokens + draft_len slots, shared by all samples). Both models' logits go through
  the same temperature (> 0) / top-k / top-p; the output follows the filtered target exactly.
  Returns (tokens int32 [B, N], stats: dict of int32 [B] per sample: "target_calls", "draft_calls",
  "blocks", "accepted" (tokens kept from drafts), "drafted" (draft positions offered, L per block)).
  """
  n = _checks.positive_int("num_tokens", num_tokens)
  k = _checks.positive_int("num_drafts", num_drafts)
  big_l = _checks.positive_int("draft_len", draft_len)
  _checks.temperature(temperature, allow_zero=False)
  if prompt_tokens.ndim != 2 or prompt_tokens.shape[1] < 1:
    raise ValueError(f"prompt_tokens must be [B, P] with P >= 1, got shape {tuple(prompt_tokens.shape)}")
  b, p = prompt_tokens.shape
  v = jax.eval_shape(target_fn, jnp.zeros((k, 1), jnp.int32), 0, target_cache)[0].shape[-1]
  categorical.check_args(v, temperature=temperature, top_k=top_k, top_p=top_p)
  probs = lambda lg: filtered_probs(lg, temperature, top_k, top_p)
  draw = lambda key, lg: categorical.sample(key, lg[None], temperature=temperature, top_k=top_k,
                                            top_p=top_p)[0]

  def one(key, prompt):
    aux = jax.random.fold_in(key, AUX_FOLD)
    rows = jnp.broadcast_to(prompt[None], (k, p)).astype(jnp.int32)
    lg, tc = target_fn(rows, 0, target_cache)
    _, dc = draft_fn(rows, 0, draft_cache)
    seq = jnp.zeros((p + n + big_l + 1,), jnp.int32).at[:p].set(prompt)
    seq = seq.at[p].set(draw(jax.random.fold_in(key, 0), lg[0, -1]))
    zero = jnp.int32(0)
    stats = dict(target_calls=jnp.int32(1), draft_calls=jnp.int32(1), blocks=zero, accepted=zero,
                 drafted=zero)

    def block(carry):
      gen, seq, tc, dc, stats = carry  # gen tokens done; slots [0, P + gen - 1) are cached
      c = p + gen
      it_key = jax.random.fold_in(aux, stats["blocks"])
      # Draft: rewrite slot c-2 (the last token of the previous block may be missing there) and
      # write the pending token at c-1, then L-1 single-token steps; k independent rows.
      last2 = jax.lax.dynamic_slice_in_dim(seq, c - 2, 2)
      dl, dc = draft_fn(jnp.broadcast_to(last2[None], (k, 2)), c - 2, dc)

      def draft_step(carry, l):
        dl, dc = carry
        x = categorical.sample(jax.random.fold_in(it_key, l), dl, temperature=temperature,
                               top_k=top_k, top_p=top_p)
        nl, dc = draft_fn(x[:, None], c + l, dc)
        return (nl[:, 0], dc), (x, probs(dl))

      (dl, dc), (xs, ps) = jax.lax.scan(draft_step, (dl[:, 1], dc), jnp.arange(big_l - 1))
      x_last = categorical.sample(jax.random.fold_in(it_key, big_l - 1), dl,
                                  temperature=temperature, top_k=top_k, top_p=top_p)
      drafts = jnp.concatenate([xs, x_last[None]], 0).T  # [k, L]
      pd = jnp.concatenate([ps, probs(dl)[None]], 0).transpose(1, 0, 2)  # [k, L, V]
      # Verify: the pending token and the L drafted ones in one target call per block.
      pending = jnp.broadcast_to(seq[c - 1], (k, 1))
      tl, tc = target_fn(jnp.concatenate([pending, drafts], 1), c - 1, tc)
      qt = probs(tl)  # [k, L + 1, V]: target distribution of t_{gen + l} along each draft
      uniforms = jax.random.uniform(jax.random.fold_in(it_key, big_l), (big_l, k))

      def select(carry, l):
        active, done, m, path, seq, acc = carry
        j0 = jnp.argmax(active)
        tok, kept = kseq_select(uniforms[l], drafts[:, l], active, pd[j0, l], qt[j0, l],
                                jax.random.fold_in(key, gen + l))
        go = ~done
        seq = jnp.where(go, seq.at[c + l].set(tok), seq)
        path = jnp.where(go, j0, path)
        new_active = active & (drafts[:, l] == tok)
        acc = acc + (go & (kept >= 0)).astype(jnp.int32)
        return (new_active, done | ~jnp.any(new_active), m + go.astype(jnp.int32), path, seq,
                acc), None

      init = (jnp.ones((k,), bool), jnp.bool_(False), zero, zero, seq, zero)
      (active, done, m, path, seq, acc), _ = jax.lax.scan(select, init, jnp.arange(big_l))
      # All L tokens matched a draft: one more token from the target after that draft.
      j_all = jnp.argmax(active)
      bonus = categorical.sample(jax.random.fold_in(key, gen + big_l),
                                 jnp.log(qt[j_all, big_l])[None])[0]
      seq = jnp.where(done, seq, seq.at[c + big_l].set(bonus))
      path = jnp.where(done, path, j_all)
      m = m + (~done).astype(jnp.int32)
      tc, dc = _take_row(tc, path, cache_axis), _take_row(dc, path, cache_axis)
      stats = dict(target_calls=stats["target_calls"] + 1,
                   draft_calls=stats["draft_calls"] + big_l, blocks=stats["blocks"] + 1,
                   accepted=stats["accepted"] + acc, drafted=stats["drafted"] + big_l)
      return gen + m, seq, tc, dc, stats

    carry = jax.lax.while_loop(lambda cr: cr[0] < n, block, (jnp.int32(1), seq, tc, dc, stats))
    return carry[1][p:p + n], carry[4]

  keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(b))
  return jax.vmap(one)(keys, jnp.asarray(prompt_tokens, jnp.int32))
