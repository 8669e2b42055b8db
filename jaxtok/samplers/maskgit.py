"""MaskGIT parallel decoding (Chang et al. 2022, google-research/maskgit), model-agnostic.

B: batch, K: tokens, V: vocabulary (the last axis of the logits).
``logits_fn(tokens int32 [B', K]) -> logits [B', K, V]``, or ``logits_fn(tokens, cond)`` when
``cond`` is given (cond: a pytree with batch axis 0, e.g. class ids; B' = B, or 2B with guidance).

Per step s of S (r = (s + 1) / S): sample every masked position from the (guided, tempered,
filtered) logits; confidence = log-probability of the sampled id + choice_temperature (1 - r)
Gumbel (MaskGIT's annealed choice noise; known tokens get +inf); re-mask exactly the n_s least
confident positions, n_s = the schedule's count (`schedules.mask_count_table`, applied to each
sample's initial number of masked tokens). Re-masking is bottom-k by argsort rank: ties cannot
re-mask too few tokens (google-research/maskgit's ``conf < sort(conf)[n]`` masks fewer than n when
the n-th confidence is tied). The last step reveals everything, so no mask id remains.

Guidance: pass ``uncond`` (e.g. the null class ids); both halves run as one batch and logits are
combined by ``guidance.cfg_uncond_base`` at ``guidance.scale_at(cfg_schedule, cfg_scale, s / S)``.
The mask id is explicit: ``mask_id in [0, V]``; inside the vocabulary its logit is set to -inf.

`sample_mode` picks a procedure by name: "maskgit" (`sample`) or "titok" (`maskgit_released`: the
released TiTok / One-D-Piece generators' sampler, with their configs' settings as presets).
"""
import inspect

import jax
import jax.numpy as jnp

from jaxtok.samplers import _checks, categorical, guidance, schedules


def call_logits(logits_fn, tokens, cond, uncond, scale):
  """Logits float32 [B, K, V] from the model, guided when ``uncond`` is given."""
  if uncond is not None:
    c, u = guidance.call_pair(logits_fn, (tokens,), cond, uncond)
    return guidance.cfg_uncond_base(c, u, scale)
  out = logits_fn(tokens) if cond is None else logits_fn(tokens, cond)
  return jnp.asarray(out, jnp.float32)


def vocab_size(logits_fn, tokens, cond):
  """V from the model's output shape (traced once with jax.eval_shape, no compute)."""
  args = (tokens,) if cond is None else (tokens, cond)
  return jax.eval_shape(logits_fn, *args).shape[-1]


def check_inputs(logits_fn, tokens, cond, mask_id):
  """Validates mask_id against V and concrete token values; returns V."""
  if tokens.ndim != 2:
    raise ValueError(f"tokens must be [B, K], got shape {tuple(tokens.shape)}")
  v = vocab_size(logits_fn, tokens, cond)
  _checks.mask_id(mask_id, v)
  _checks.tokens_in_range("tokens", tokens, v, mask_id)
  return v


def forbid_mask(logits, mask_id):
  """Sets the mask id's logit to -inf when it lies inside the vocabulary."""
  return logits.at[..., mask_id].set(-jnp.inf) if mask_id < logits.shape[-1] else logits


def sample(rng, logits_fn, tokens, *, mask_id, steps, schedule="cosine", temperature=1.0,
           choice_temperature=4.5, top_k=None, top_p=None, cond=None, uncond=None, cfg_scale=1.0,
           cfg_schedule="constant", cfg_power=1.0, random_choice=False):
  """Fills every ``mask_id`` entry of tokens int32 [B, K].

  Returns (tokens int32 [B, K], masked_counts int32 [steps, B]: masked tokens left after each
  step). steps in [1, K]; temperature >= 0 (0 = argmax tokens); choice_temperature >= 0 (may
  be traced); cfg_scale may be traced. random_choice=True re-masks a uniformly random subset of
  the new tokens instead of the least confident ones (confidence = pure Gumbel noise).
  """
  _checks.positive_int("steps", steps)
  guidance.check_schedule(cfg_schedule)
  guidance.check_scale(cfg_scale)
  b, k = tokens.shape
  if steps > k:
    raise ValueError(f"steps must be <= the number of tokens K={k}, got {steps}")
  if _checks.is_concrete(choice_temperature) and choice_temperature < 0:
    raise ValueError(f"choice_temperature must be >= 0, got {choice_temperature}")
  v = check_inputs(logits_fn, tokens, cond, mask_id)
  categorical.check_args(v, temperature=temperature, top_k=top_k, top_p=top_p)
  table = jnp.asarray(schedules.mask_count_table(schedule, k, steps))
  unknown0 = jnp.sum(tokens == mask_id, -1)
  counts = table[unknown0].T  # [steps, B], per-sample schedule on the initial unknown count

  def body(tok, s):
    masked = tok == mask_id
    scale = guidance.scale_at(cfg_schedule, cfg_scale, s / steps, cfg_power)
    logits = forbid_mask(call_logits(logits_fn, tok, cond, uncond, scale), mask_id)
    sampled, conf = draw_with_confidence(rng, s, steps, logits, masked, temperature=temperature,
                                         top_k=top_k, top_p=top_p,
                                         choice_temperature=choice_temperature,
                                         random_choice=random_choice)
    new = jnp.where(masked, sampled, tok)
    rank = jnp.argsort(jnp.argsort(conf, -1), -1)  # exact: ranks are a permutation
    new = jnp.where(rank < counts[s][:, None], mask_id, new)
    return new, jnp.sum(new == mask_id, -1).astype(jnp.int32)

  return jax.lax.scan(body, tokens.astype(jnp.int32), jnp.arange(steps))


def draw_with_confidence(rng, s, steps, logits, masked, *, temperature, top_k, top_p,
                         choice_temperature, random_choice=False):
  """Step s of `sample` before re-masking: (sampled int32 [B, K] from logits [B, K, V] with the key
  split(fold_in(rng, s))[0], confidence float32 [B, K]: the log-probability of the sampled id plus
  choice_temperature (1 - (s + 1) / steps) Gumbel noise from split(...)[1] -- or that noise alone
  with random_choice (a uniformly random choice of the kept positions); +inf where not masked)."""
  k_tok, k_choice = jax.random.split(jax.random.fold_in(rng, s))
  sampled = categorical.sample(k_tok, logits, temperature=temperature, top_k=top_k, top_p=top_p)
  # Confidence under the distribution the token was drawn from (temperature and filters).
  t = temperature if temperature > 0 else 1.0
  logp = jax.nn.log_softmax(categorical.filter_logits(logits / t, top_k=top_k, top_p=top_p), -1)
  conf = jnp.take_along_axis(logp, sampled[..., None], -1)[..., 0]
  r = (s + 1.0) / steps
  noise = categorical.gumbel(k_choice, conf.shape)
  conf = noise if random_choice else conf + choice_temperature * (1.0 - r) * noise
  return sampled, jnp.where(masked, conf, jnp.inf)


# ---- named procedures ----

MODES = ("maskgit", "titok")


def sample_mode(mode, rng, logits_fn, tokens, *, mask_id, preset=None, **settings):
  """Runs a MaskGIT sampling procedure by name on tokens int32 [B, K]:

    "maskgit"  `sample` above (google-research/maskgit); settings are its keyword arguments.
    "titok"    `maskgit_released.sample`: the released TiTok / One-D-Piece generators' procedure
               (bytedance/1d-tokenizer ImageBert.generate); preset names one of
               `maskgit_released.PRESETS` (the released configs' settings), which explicit
               settings override.

  Returns (tokens int32 [B, K], masked_counts int32 [steps, B]) (and the tokens after each step
  with the "titok" setting return_steps=True).
  """
  # Imported here: maskgit_released builds on this module's helpers (an import cycle otherwise).
  from jaxtok.samplers import maskgit_released  # pylint: disable=g-import-not-at-top
  fns = {"maskgit": sample, "titok": maskgit_released.sample}
  if mode not in fns:
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
  if preset is not None:
    if mode != "titok":
      raise ValueError(f"preset is only defined for mode 'titok', got preset={preset!r} with "
                       f"mode={mode!r}")
    settings = {**maskgit_released.preset(preset), **settings}
  known = set(inspect.signature(fns[mode]).parameters) - {"rng", "logits_fn", "tokens", "mask_id"}
  unknown = sorted(set(settings) - known)
  if unknown:
    raise ValueError(f"settings for mode {mode!r} must be among {sorted(known)}, got {unknown}")
  return fns[mode](rng, logits_fn, tokens, mask_id=mask_id, **settings)
