"""Next-neighbour sampling (NAR, He et al. 2025): one model call per diagonal of the token grid.

B: batch, D: diagonals (h + w - 1), L: longest diagonal, N: tokens, V: vocabulary.
The grid's decoding order is given as ``diagonals`` int [D, L] (static, e.g.
``jaxtok.generators.nar.diagonals(h, w)``): the raster index of the k-th token of diagonal d, -1 past
its end. Contract (``jaxtok.generators.nar.NAR.prefill`` / ``.step`` satisfy it):
  ``prefill_fn(prompt int32 [B', P], cache) -> (logits [B', V] of diagonal 0's token, cache)``
  ``step_fn(tokens int32 [B', L] of diagonal d, d int32 scalar, cache) -> (logits [B', L, V] of
  diagonal d + 1, cache)``
so a grid costs exactly D model calls (``num_model_calls``): 2n - 1 for n x n, against n^2 for
raster AR. All steps run in one ``lax.fori_loop`` with static shapes; entries past a diagonal's end
are drawn and fed back like the others and dropped at the end.

Step d (0 = the prefill) draws all of diagonal d at once, independently given the earlier diagonals,
from logits [B, L, V] with the noise fold_in(rng, d), through ``autoregressive.make_drawer``:
guidance (``uncond_prompt_tokens``, one batch of 2B, ``guidance.cfg_uncond_base`` at the schedule's
scale for progress d / D), then temperature, top-k, top-p. ``sample_recompute`` is the cache-free
reference with the same draws.
"""
import jax
import jax.numpy as jnp
import numpy as np

from jaxtok.samplers import autoregressive, guidance


def num_model_calls(diagonals) -> int:
  """Model calls of one sample: one per diagonal (the first is the prefill)."""
  return int(np.shape(diagonals)[0])


def _check_diagonals(diagonals):
  diag = np.asarray(diagonals)
  if diag.ndim != 2 or diag.shape[0] < 1:
    raise ValueError(f"diagonals must be an int array [D, L] with D >= 1, got shape {diag.shape}")
  real = np.sort(diag[diag >= 0])
  if not np.array_equal(real, np.arange(real.size)):
    raise ValueError(f"diagonals must hold each raster index 0..N-1 exactly once (-1 = padding), "
                     f"got {sorted(real.tolist())}")
  return diag


def _setup(rng, prompt_tokens, uncond_prompt_tokens, diagonals, opts):
  diag = _check_diagonals(diagonals)
  guidance.check_schedule(opts["cfg_schedule"])
  guidance.check_scale(opts["cfg_scale"])
  if uncond_prompt_tokens is not None and uncond_prompt_tokens.shape != prompt_tokens.shape:
    raise ValueError(f"uncond_prompt_tokens must have the prompt's shape {tuple(prompt_tokens.shape)}, "
                     f"got {tuple(uncond_prompt_tokens.shape)}")
  b = prompt_tokens.shape[0]
  guided = uncond_prompt_tokens is not None
  draw = autoregressive.make_drawer(rng, b, diag.shape[0], guided, **opts)
  prompt = jnp.concatenate([prompt_tokens, uncond_prompt_tokens]) if guided else prompt_tokens
  return diag, b, guided, draw, prompt.astype(jnp.int32)


def _to_raster(out, diag):
  """Diagonal-major draws int32 [B, D, L] -> tokens int32 [B, N] in raster order."""
  flat, idx = out.reshape(out.shape[0], -1), diag.reshape(-1)
  real = np.nonzero(idx >= 0)[0]
  return jnp.zeros((out.shape[0], real.size), jnp.int32).at[:, idx[real]].set(flat[:, real])


def sample(rng, prefill_fn, step_fn, cache, prompt_tokens, *, diagonals, temperature=1.0,
           top_k=None, top_p=None, uncond_prompt_tokens=None, cfg_scale=1.0,
           cfg_schedule="constant", cfg_power=1.0):
  """Returns tokens int32 [B, N] (raster order), decoded diagonal by diagonal with the cache.

  cache: the callables' cache for B rows (2B with ``uncond_prompt_tokens``).
  """
  opts = dict(temperature=temperature, top_k=top_k, top_p=top_p, cfg_scale=cfg_scale,
              cfg_schedule=cfg_schedule, cfg_power=cfg_power)
  diag, b, guided, draw, prompt = _setup(rng, prompt_tokens, uncond_prompt_tokens, diagonals, opts)
  num, longest = diag.shape
  feed = (lambda t: jnp.concatenate([t, t])) if guided else (lambda t: t)
  logits, cache = prefill_fn(prompt, cache)
  first = draw(jnp.broadcast_to(logits[:, None], (logits.shape[0], longest, logits.shape[-1])), 0)
  out = jnp.zeros((b, num, longest), jnp.int32).at[:, 0].set(first)

  def body(d, carry):
    cache, out = carry
    logits, cache = step_fn(feed(out[:, d]), d, cache)
    return cache, out.at[:, d + 1].set(draw(logits, d + 1))

  out = jax.lax.fori_loop(0, num - 1, body, (cache, out))[1]
  return _to_raster(out, diag)


def sample_recompute(rng, logits_fn, prompt_tokens, *, diagonals, temperature=1.0, top_k=None,
                     top_p=None, uncond_prompt_tokens=None, cfg_scale=1.0, cfg_schedule="constant",
                     cfg_power=1.0):
  """Reference without a cache, same options and draws as `sample`.

  ``logits_fn(prompt int32 [B', P], tokens int32 [B', N]) -> logits [B', N, V]``: the teacher-forced
  logits of every token (raster order); those of diagonal d may depend only on diagonals < d (NAR's
  near-causal mask), so the not-yet-drawn zeros do not matter. D full passes.
  """
  opts = dict(temperature=temperature, top_k=top_k, top_p=top_p, cfg_scale=cfg_scale,
              cfg_schedule=cfg_schedule, cfg_power=cfg_power)
  diag, b, guided, draw, prompt = _setup(rng, prompt_tokens, uncond_prompt_tokens, diagonals, opts)
  num, longest = diag.shape
  tokens = jnp.zeros((prompt.shape[0], int((diag >= 0).sum())), jnp.int32)
  out = jnp.zeros((b, num, longest), jnp.int32)
  for d in range(num):
    logits = logits_fn(prompt, tokens)[:, np.maximum(diag[d], 0)]  # [B', L, V]
    out = out.at[:, d].set(draw(logits, d))
    raster = _to_raster(out, diag)
    tokens = jnp.concatenate([raster, raster]) if guided else raster
  return _to_raster(out, diag)
