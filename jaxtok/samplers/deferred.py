"""Deferred Commitment Decoding (DCD) for masked diffusion over tokens: a certainty-aware sliding
window instead of fixed blocks (Deferred Commitment Decoding for Diffusion Language Models).

B: batch, K: tokens, V: vocabulary; ``logits_fn(tokens int32 [B', K]) -> logits [B', K, V]`` (or
``logits_fn(tokens, cond)``), the mask id explicit as in `masked_diffusion` (guidance likewise).

Each step (one model call): the window is the first `window` still-masked positions in sequence
order (for 1D image tokens, their index order), so it slides forward as its leading tokens are
committed. Every masked position gets a draw from the (guided, tempered, filtered) logits and a
certainty, the probability of that draw under the distribution it was drawn from. Inside the
window, every draw with certainty >= `threshold` is committed; if none reaches it, only the window's
most certain draw is (so each step commits at least one token). Draws outside the window and the
uncertain ones inside are discarded: those positions stay masked and are decided later, with more
context. The loop runs until nothing is masked (at most K calls).
"""
import jax
import jax.numpy as jnp

from jaxtok.samplers import _checks, categorical, guidance, masked_diffusion


def sample(rng, logits_fn, tokens, *, mask_id, window, threshold=0.9, temperature=1.0,
           top_k=None, top_p=None, cond=None, uncond=None, cfg_scale=1.0):
  """Fills every ``mask_id`` of tokens int32 [B, K].

  Returns (tokens int32 [B, K], commit_step int32 [B, K]: the call at which each position was
  committed, -1 where the input gave it; the sample's number of calls is max + 1). window in
  [1, K]; threshold in [0, 1] (0: commit the whole window each step, > 1: one token per step).
  Call j uses the key ``fold_in(rng, j)``.
  """
  masked_diffusion._check(logits_fn, tokens, cond, mask_id, False, temperature, top_k, top_p)  # pylint: disable=protected-access
  guidance.check_scale(cfg_scale)
  b, k = tokens.shape
  window = _checks.positive_int("window", window)
  if window > k:
    raise ValueError(f"window must be <= the number of tokens K={k}, got {window}")
  if not threshold >= 0:
    raise ValueError(f"threshold must be >= 0, got {threshold}")
  model = masked_diffusion._model(logits_fn, False, cond, uncond, cfg_scale, mask_id)  # pylint: disable=protected-access
  t = temperature if temperature > 0 else 1.0

  def body(carry):
    j, tok, step_of = carry
    masked = tok == mask_id
    in_window = masked & (jnp.cumsum(masked, -1) <= window)
    logits = model(tok, None)
    drawn = categorical.sample(jax.random.fold_in(rng, j), logits, temperature=temperature,
                               top_k=top_k, top_p=top_p)
    logp = jax.nn.log_softmax(categorical.filter_logits(logits / t, top_k=top_k, top_p=top_p), -1)
    certainty = jnp.exp(jnp.take_along_axis(logp, drawn[..., None], -1)[..., 0])
    score = jnp.where(in_window, certainty, -1.0)
    best = jnp.arange(k)[None] == jnp.argmax(score, -1)[:, None]
    sure = in_window & (certainty >= threshold)
    commit = jnp.where(sure.any(-1, keepdims=True), sure, best & in_window)
    return j + 1, jnp.where(commit, drawn, tok), jnp.where(commit, j, step_of)

  init = (jnp.int32(0), tokens.astype(jnp.int32), jnp.full((b, k), -1, jnp.int32))
  _, tok, step_of = jax.lax.while_loop(lambda c: jnp.any(c[1] == mask_id), body, init)
  return tok, step_of
