"""Masked (absorbing-state) diffusion sampling: the first-hitting sampler and the ancestral sampler.

B: batch, K: tokens, V: vocabulary. ``logits_fn(tokens int32 [B', K]) -> logits [B', K, V]``, the
model's p(x0 | x_t) at every position (values at unmasked positions are ignored), or
``logits_fn(tokens, cond)`` when ``cond`` is given; with ``time_conditioned=True`` the current
masking level t float32 [B'] is passed after the tokens: ``logits_fn(tokens, t[, cond])``.
Guidance (``uncond``) runs both halves as one batch and combines logits with
``guidance.cfg_uncond_base`` at the constant ``cfg_scale``. The mask id is explicit,
``mask_id in [0, V]``; inside the vocabulary its logit is -inf.

First-hitting sampler (FHS; Zheng et al. 2024, arXiv 2409.02908, §3; the same update as
kuleshov-group/bd3lms's "faster (equivalent) sampler"): under the reverse process each masked token
unmasks at its own time, and with n tokens masked at time t (linear schedule, masked fraction t)
the next unmasking happens at tau = t u^(1/n), u ~ U(0, 1), at one masked position chosen
uniformly. So each model call reveals exactly one token, drawn from its conditional given
everything revealed so far: an exact any-order autoregressive sampler, K calls for K masks. tau is
only needed by a time-conditioned network (the paper shows the optimum is time-agnostic).

Ancestral sampler (the standard reverse step, MDLM/MD4): on a grid r_i = i / S of progress, the
masked fraction is gamma(r) (a `schedules` name: linear gamma(r) = 1 - r is MDLM's alpha_t = 1 - t);
from r_i to r_{i+1} each masked token unmasks independently with probability
(gamma(r_i) - gamma(r_{i+1})) / gamma(r_i), its value drawn from the model at the current state.
Tokens revealed in the same step are drawn independently, so the sampler is exact only as S grows
(tau-leaping differs only in using 1 - exp of the rate for that probability); the last step
reveals everything.
"""
import jax
import jax.numpy as jnp
import numpy as np

from jaxtok.samplers import _checks, categorical, guidance, schedules


def _model(logits_fn, time_conditioned, cond, uncond, cfg_scale, mask_id):
  """(tokens [B, K], t [B]) -> guided float32 logits [B, K, V] with the mask id forbidden."""
  def call(tokens, t):
    args = (tokens, t) if time_conditioned else (tokens,)
    if uncond is not None:
      c, u = guidance.call_pair(logits_fn, args, cond, uncond)
      out = guidance.cfg_uncond_base(c, u, cfg_scale)
    else:
      out = jnp.asarray(logits_fn(*args) if cond is None else logits_fn(*args, cond), jnp.float32)
    return out.at[..., mask_id].set(-jnp.inf) if mask_id < out.shape[-1] else out
  return call


def _check(logits_fn, tokens, cond, mask_id, time_conditioned, temperature, top_k, top_p):
  if tokens.ndim != 2:
    raise ValueError(f"tokens must be [B, K], got shape {tuple(tokens.shape)}")
  args = (tokens, jnp.ones(tokens.shape[:1], jnp.float32)) if time_conditioned else (tokens,)
  v = jax.eval_shape(logits_fn, *(args if cond is None else args + (cond,))).shape[-1]
  _checks.mask_id(mask_id, v)
  _checks.tokens_in_range("tokens", tokens, v, mask_id)
  categorical.check_args(v, temperature=temperature, top_k=top_k, top_p=top_p)


def first_hitting(rng, logits_fn, tokens, *, mask_id, temperature=1.0, top_k=None, top_p=None,
                  cond=None, uncond=None, cfg_scale=1.0, time_conditioned=False):
  """Fills every ``mask_id`` of tokens int32 [B, K] one token per model call.

  Returns (tokens int32 [B, K], hit_times float32 [B, K]: the first-hitting time at which each
  position was revealed, 1.0 for positions given in the input). Runs a ``lax.while_loop`` until no
  sample has a mask (at most K calls); call j uses the key ``fold_in(rng, j)``.
  """
  _check(logits_fn, tokens, cond, mask_id, time_conditioned, temperature, top_k, top_p)
  guidance.check_scale(cfg_scale)
  model = _model(logits_fn, time_conditioned, cond, uncond, cfg_scale, mask_id)
  b, k = tokens.shape

  def body(carry):
    j, tok, t, times = carry
    masked = tok == mask_id
    n = jnp.sum(masked, -1)
    k_time, k_pos, k_tok = jax.random.split(jax.random.fold_in(rng, j), 3)
    # Next first-hitting time of n i.i.d. uniform(0, t) unmasking times: t u^(1/n).
    u = jax.random.uniform(k_time, (b,), minval=jnp.finfo(jnp.float32).tiny)
    t = jnp.where(n > 0, t * u ** (1.0 / jnp.maximum(n, 1)), t)
    logits = model(tok, t)
    # Uniform choice among masked positions (Gumbel-max over equal scores).
    pos = jnp.argmax(jnp.where(masked, categorical.gumbel(k_pos, (b, k)), -jnp.inf), -1)
    row = jnp.take_along_axis(logits, pos[:, None, None], 1)[:, 0]
    new = categorical.sample(k_tok, row, temperature=temperature, top_k=top_k, top_p=top_p)
    hit = (jnp.arange(k)[None] == pos[:, None]) & (n > 0)[:, None]
    return j + 1, jnp.where(hit, new[:, None], tok), t, jnp.where(hit, t[:, None], times)

  init = (jnp.int32(0), tokens.astype(jnp.int32), jnp.ones((b,), jnp.float32),
          jnp.ones((b, k), jnp.float32))
  _, tok, _, times = jax.lax.while_loop(lambda c: jnp.any(c[1] == mask_id), body, init)
  return tok, times


def first_hitting_parallel(rng, logits_fn, tokens, *, mask_id, tokens_per_step, temperature=1.0,
                           top_k=None, top_p=None, cond=None, uncond=None, cfg_scale=1.0,
                           time_conditioned=False):
  """The first-hitting sampler with m = min(tokens_per_step, n) first-hitting events per model call.

  With n masked at time t the next m unmasking times are t_1 = t u_1^(1/n), t_j = t_{j-1}
  u_j^(1/(n-j+1)) (the m largest of n i.i.d. uniform(0, t) times), at m masked positions chosen
  uniformly without replacement (top-m of Gumbel noise); all m tokens are drawn independently from
  the model's conditionals at the current state (called at time t_1), which is the approximation:
  tokens_per_step = 1 is `first_hitting` itself, the same draws from the same keys. Returns
  (tokens int32 [B, K], hit_times float32 [B, K]); ceil(n / tokens_per_step) calls for n masks.
  """
  _check(logits_fn, tokens, cond, mask_id, time_conditioned, temperature, top_k, top_p)
  guidance.check_scale(cfg_scale)
  m = _checks.positive_int("tokens_per_step", tokens_per_step)
  model = _model(logits_fn, time_conditioned, cond, uncond, cfg_scale, mask_id)
  b, k = tokens.shape
  m = min(m, k)

  def body(carry):
    j, tok, t, times = carry
    masked = tok == mask_id
    n = jnp.sum(masked, -1)
    k_time, k_pos, k_tok = jax.random.split(jax.random.fold_in(rng, j), 3)
    u = jax.random.uniform(k_time, (b, m), minval=jnp.finfo(jnp.float32).tiny)
    # Event i (0-based) happens among n - i remaining masks: cumulative product of u_i^(1/(n-i)).
    left = jnp.maximum(n[:, None] - jnp.arange(m)[None], 1)
    hits = t[:, None] * jnp.cumprod(u ** (1.0 / left), axis=1)  # [B, m], decreasing
    active = jnp.arange(m)[None] < n[:, None]
    logits = model(tok, jnp.where(n > 0, hits[:, 0], t))
    score = jnp.where(masked, categorical.gumbel(k_pos, (b, k)), -jnp.inf)
    pos = jax.lax.top_k(score, m)[1]  # [B, m]; the first is `first_hitting`'s argmax
    rows = jnp.take_along_axis(logits, pos[..., None], 1)  # [B, m, V]
    new = categorical.sample(k_tok, rows if m > 1 else rows[:, 0],
                             temperature=temperature, top_k=top_k, top_p=top_p).reshape(b, m)
    sel = (jnp.arange(k)[None, None] == pos[..., None]) & active[..., None]  # [B, m, K]
    hit = sel.any(1)
    value = jnp.sum(jnp.where(sel, new[..., None], 0), 1)
    when = jnp.sum(jnp.where(sel, hits[..., None], 0.0), 1)
    last = jnp.take_along_axis(hits, jnp.clip(n - 1, 0, m - 1)[:, None], 1)[:, 0]
    t = jnp.where(n > 0, jnp.where(n >= m, hits[:, -1], last), t)
    return j + 1, jnp.where(hit, value, tok), t, jnp.where(hit, when, times)

  init = (jnp.int32(0), tokens.astype(jnp.int32), jnp.ones((b,), jnp.float32),
          jnp.ones((b, k), jnp.float32))
  _, tok, _, times = jax.lax.while_loop(lambda c: jnp.any(c[1] == mask_id), body, init)
  return tok, times


def unmask_probabilities(schedule, steps):
  """float32 [steps]: probability that a token still masked at r_i unmasks by r_{i+1}, i.e.
  (gamma(r_i) - gamma(r_{i+1})) / gamma(r_i); the last entry is 1."""
  _checks.positive_int("steps", steps)
  g = schedules.get(schedule)(np.arange(steps + 1) / steps)
  p = (g[:-1] - g[1:]) / np.maximum(g[:-1], 1e-300)
  p[-1] = 1.0
  return np.asarray(np.clip(p, 0.0, 1.0), np.float32)


def ancestral(rng, logits_fn, tokens, *, mask_id, steps, schedule="linear", temperature=1.0,
              top_k=None, top_p=None, cond=None, uncond=None, cfg_scale=1.0,
              time_conditioned=False):
  """Fills every ``mask_id`` of tokens int32 [B, K] in ``steps`` reverse steps (one lax.scan).

  Step i uses ``fold_in(rng, i)``; a time-conditioned model gets t = gamma(r_i) (the masked
  fraction, equal to MDLM's t for the linear schedule). Returns tokens int32 [B, K].
  """
  _check(logits_fn, tokens, cond, mask_id, time_conditioned, temperature, top_k, top_p)
  guidance.check_scale(cfg_scale)
  probs = jnp.asarray(unmask_probabilities(schedule, steps))
  levels = jnp.asarray(schedules.get(schedule)(np.arange(steps) / steps), jnp.float32)
  model = _model(logits_fn, time_conditioned, cond, uncond, cfg_scale, mask_id)
  b, k = tokens.shape

  def body(tok, i):
    masked = tok == mask_id
    k_unmask, k_tok = jax.random.split(jax.random.fold_in(rng, i))
    logits = model(tok, jnp.full((b,), levels[i]))
    new = categorical.sample(k_tok, logits, temperature=temperature, top_k=top_k, top_p=top_p)
    reveal = masked & (jax.random.uniform(k_unmask, (b, k)) < probs[i])
    return jnp.where(reveal, new, tok), None

  return jax.lax.scan(body, tokens.astype(jnp.int32), jnp.arange(steps))[0]
