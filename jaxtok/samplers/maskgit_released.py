"""The released TiTok / One-D-Piece MaskGIT sampler, model-agnostic (mode "titok" of
`maskgit.sample_mode`): bytedance/1d-tokenizer `modeling/maskgit.py` `ImageBert.generate` @ 942a96f
(UViTBert inherits it; turingmotors/One-D-Piece @ 473665d carries the same method unchanged).

B: batch, K: tokens, V: vocabulary (the last axis of the logits); `logits_fn`, `cond` and `uncond`
as in `maskgit.sample`. Step s of S, r = (s + 1) / S, T_s = randomize_temperature (1 - r),
G(U) = -log(max(-log(max(U, 1e-20)), 1e-20)) of fresh float32 uniforms U:

  1. logits = the (guided) model logits at scale w_s (below); with softmax_temperature_annealing
     they are divided by 0.5 + 0.8 (1 - r).
  2. token = argmax(logits + T_s G(U)), U [B, K, V] (Gumbel-max at temperature T_s: a softmax
     sample only where T_s = 1; T_{S-1} = 0, so the last step is greedy).
  3. confidence = logits[token] + T_s G(U'), U' [B, K]: the raw logit of the token, not its
     log-probability; +inf where the token was already known.
  4. n = max(1, min(masked - 1, floor(K arccos(r) / (pi / 2)))); every position whose confidence
     is <= the n-th smallest is re-masked (ties at the cut are all re-masked, as released). The
     last step re-masks nothing.

Guidance (only with `uncond`), by guidance_decay, g = guidance_scale, p = guidance_scale_pow:
  constant      w_s = g                                    logits = c + w_s (c - u)
  linear        w_s = g s / S  (0 at step 0)               logits = c + w_s (c - u)
  power-cosine  w_s = (g - 1)(1 - cos(pi (s/S)^p)) / 2 + 1  logits = u + w_s (c - u)   (MDT)
  maskgen_cosine / maskgen_linear: MaskGen's (`MASKGEN_DECAYS`), r = (s + 1) / S, c + w_s (c - u).
The two formulas are the release's (`guidance.cfg_cond_base`, neutral at 0, and the u-based one,
neutral at 1). Where w_s = 0 the conditional logits are used alone, as the release skips the
unconditional pass there (here it still runs, for static shapes, and is discarded).

Where this differs from the release, which always starts from all-mask tokens: the count n uses
each sample's own masked count (the release uses sample 0's for the whole batch: the same number
when every sample starts all-masked); known input tokens are never re-masked (the release would
re-mask a whole sample with no mask left); a mask id inside the vocabulary gets a -inf logit.

Precision: as released, the uniforms are float32, so the Gumbel noise is bounded (about 16) and the
token choice cuts low-probability tails; use mode "maskgit" for tail-exact sampling. Step constants
(T_s, the annealed divisor, the linear w_s) are computed in float64 and rounded to float32, as torch
does with Python scalars, so that fixed noise gives the release's tokens (golden test); a traced
randomize_temperature or guidance_scale is combined in float32 instead.
"""
import jax
import jax.numpy as jnp
import numpy as np

from jaxtok.samplers import _checks, guidance, maskgit, schedules

DECAYS = ("constant", "linear", "power-cosine")
# MaskGen's schedules (bytedance/1d-tokenizer modeling/maskgen.py MaskGen_VQ.generate), both with
# r = (s + 1) / S and logits = c + w_s (c - u):
#   maskgen_cosine  w_s = (g - 1)(1 - cos(pi r^p)) / 2 + 1     (its "cosine", the default, p = 1)
#   maskgen_linear  w_s = (g - 1) r + 1                        (its "linear")
# (its "none" is "constant" above).
MASKGEN_DECAYS = ("maskgen_cosine", "maskgen_linear")

def _released(steps, randomize_temperature, guidance_scale, guidance_decay, annealing):
  # guidance_scale_pow is never set by a release: demo_util.sample_fn's default 3.0 applies.
  return dict(steps=steps, randomize_temperature=randomize_temperature,
              guidance_scale=guidance_scale, guidance_decay=guidance_decay,
              guidance_scale_pow=3.0, softmax_temperature_annealing=annealing)


# The released generators' sampling settings (keyword arguments of `sample`): steps,
# randomize_temperature, guidance_scale and guidance_decay from each config's model.generator
# (num_steps, ...). softmax_temperature_annealing: True in TiTok's ImageNet script
# (1d-tokenizer sample_imagenet_titok.py). One-D-Piece's eval/generator/sample_imagenet.py takes it
# (and the step count) from command-line flags whose config fallbacks (generator.
# softmax_temperature_annealing, generator.num_sample_steps) no config defines, and its README
# passes none: the value used is not recorded, so those presets keep sample_fn's default False.
PRESETS = {
    # 1d-tokenizer configs/infer/TiTok/titok_l32.yaml
    "titok_l32": _released(8, 9.5, 4.5, "linear", True),
    # 1d-tokenizer configs/infer/TiTok/titok_b64.yaml
    "titok_b64": _released(8, 11.0, 3.0, "linear", True),
    # 1d-tokenizer configs/infer/TiTok/titok_s128.yaml (UViT generator)
    "titok_s128": _released(64, 2.8, 6.9, "power-cosine", True),
    # 1d-tokenizer README_TiTok.md demo (sample_fn defaults otherwise); the same values as
    # configs/training/generator/maskgit.yaml
    "titok_demo": _released(8, 1.0, 4.5, "constant", False),
    # One-D-Piece configs/training/generator/maskgit_one-d-piece_l256.yaml ("best params")
    "onedpiece_l256": _released(16, 3.0, 5.5, "power-cosine", False),
    # One-D-Piece configs/training/generator/maskgit_one-d-piece_b256.yaml
    "onedpiece_b256": _released(16, 2.5, 8.5, "power-cosine", False),
    # One-D-Piece configs/training/generator/maskgit_one-d-piece_s256.yaml
    "onedpiece_s256": _released(16, 3.0, 12.5, "power-cosine", False),
}


def preset(name):
  """A copy of PRESETS[name] (keyword arguments of `sample`)."""
  if name not in PRESETS:
    raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {name!r}")
  return dict(PRESETS[name])


def gumbel(u):
  """Gumbel noise float32 from uniforms U in [0, 1), any shape: -log(-log(U)) with both logs'
  inputs clamped at 1e-20 (the release's `gumbel_noise`; U = 0 gives about -3.8, not -inf)."""
  tiny = 1e-20
  return -jnp.log(jnp.maximum(-jnp.log(jnp.maximum(u, tiny)), tiny))


def _nonneg_finite(name, value):
  if _checks.is_concrete(value):
    with jax.ensure_compile_time_eval():
      ok = np.all(np.isfinite(np.asarray(value, np.float64))) and np.all(np.asarray(value) >= 0)
    if not ok:
      raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def _check(steps, randomize_temperature, softmax_temperature_annealing, guidance_scale,
           guidance_decay, guidance_scale_pow):
  _checks.positive_int("steps", steps)
  if guidance_decay not in DECAYS + MASKGEN_DECAYS:
    raise ValueError(f"guidance_decay must be one of {DECAYS + MASKGEN_DECAYS}, got "
                     f"{guidance_decay!r}")
  _nonneg_finite("randomize_temperature", randomize_temperature)
  guidance.check_scale(guidance_scale, "guidance_scale")
  # Static: power-cosine branches on p = 0 while tracing (guidance.power_cosine_scale).
  if isinstance(guidance_scale_pow, bool) or not isinstance(guidance_scale_pow, (int, float)):
    raise ValueError(f"guidance_scale_pow must be a Python number, got {guidance_scale_pow!r}")
  _nonneg_finite("guidance_scale_pow", guidance_scale_pow)  # (0/S)^p is inf for p < 0
  if not isinstance(softmax_temperature_annealing, (bool, np.bool_)):
    raise ValueError("softmax_temperature_annealing must be a bool, got "
                     f"{softmax_temperature_annealing!r}")


def _times(value, host):
  """value * host (float64 numpy [S]) as float32 [S]: in float64 when value is concrete."""
  if _checks.is_concrete(value):
    with jax.ensure_compile_time_eval():
      return jnp.asarray(np.asarray(value, np.float64) * host, jnp.float32)
  return jnp.asarray(value, jnp.float32) * jnp.asarray(host, jnp.float32)


def step_tables(k, steps, randomize_temperature, softmax_temperature_annealing, guidance_scale,
                guidance_decay, guidance_scale_pow):
  """Per-step constants: dict of [steps] arrays: cut int32 (floor(K arccos(r) / (pi/2))), temp
  float32 (T_s), divisor float32, scale float32 (w_s)."""
  s = np.arange(steps, dtype=np.float64)
  ratio = (s + 1.0) / steps  # the release's 1. * (step + 1) / num_sample_steps
  divisor = 0.5 + 0.8 * (1.0 - ratio) if softmax_temperature_annealing else np.ones(steps)
  if guidance_decay == "constant":
    scale = _times(guidance_scale, np.ones(steps))
  elif guidance_decay == "linear":  # set after step s - 1 as ratio * g; 0 before the first step
    scale = _times(guidance_scale, s / steps)
  elif guidance_decay == "maskgen_linear":
    scale = guidance.linear_scale(jnp.asarray(guidance_scale, jnp.float32),
                                  jnp.asarray(ratio, jnp.float32))
  elif guidance_decay == "maskgen_cosine":
    scale = guidance.power_cosine_scale(guidance_scale, jnp.asarray(ratio, jnp.float32),
                                        guidance_scale_pow)
  else:
    scale = guidance.power_cosine_scale(guidance_scale, jnp.asarray(s / steps, jnp.float32),
                                        guidance_scale_pow)
  return dict(cut=jnp.asarray(np.floor(k * schedules.arccos(ratio)), jnp.int32),
              temp=_times(randomize_temperature, 1.0 - ratio),
              divisor=jnp.asarray(divisor, jnp.float32),
              scale=jnp.broadcast_to(jnp.asarray(scale, jnp.float32), (steps,)))  # p = 0: scalar


def guided_logits(logits_fn, tokens, cond, uncond, scale, decay):
  """The release's guided logits float32 [B, K, V] at scale w (scalar, may be traced)."""
  if uncond is None:
    return maskgit.call_logits(logits_fn, tokens, cond, None, None)
  c, u = guidance.call_pair(logits_fn, (tokens,), cond, uncond)
  c, u = jnp.asarray(c, jnp.float32), jnp.asarray(u, jnp.float32)
  mixed = u + (c - u) * scale if decay == "power-cosine" else guidance.cfg_cond_base(c, u, scale)
  return jnp.where(scale != 0, mixed, c)


def _check_noise(noise, steps, b, k, v):
  want = ((steps, b, k, v), (steps, b, k))
  got = None if noise is None or len(noise) != 2 else tuple(tuple(jnp.shape(n)) for n in noise)
  if got != want:
    raise ValueError(f"noise must be a pair of uniform arrays shaped {want}, got shapes {got}")


def sample(rng, logits_fn, tokens, *, mask_id, steps=8, randomize_temperature=4.5,
           softmax_temperature_annealing=False, cond=None, uncond=None, guidance_scale=3.0,
           guidance_decay="constant", guidance_scale_pow=3.0, noise=None, return_steps=False):
  """Fills every ``mask_id`` entry of tokens int32 [B, K] by the released procedure (module doc).

  Defaults are `ImageBert.generate`'s; `PRESETS` holds the released generators' settings. steps >= 1
  (may exceed K: the release then re-masks a lone token until the last step); randomize_temperature
  >= 0 and guidance_scale may be traced; guidance_scale_pow is a Python number >= 0.
  rng: a key, or None when ``noise`` is given. noise: None, or (token uniforms float32 [steps, B, K,
  V], confidence uniforms float32 [steps, B, K]) in [0, 1), used instead of draws from rng (the
  golden tests feed the release the same arrays).

  Returns (tokens int32 [B, K], masked_counts int32 [steps, B]: masked tokens left after each step),
  plus, with return_steps, the tokens after each step int32 [steps, B, K].
  """
  _check(steps, randomize_temperature, softmax_temperature_annealing, guidance_scale,
         guidance_decay, guidance_scale_pow)
  v = maskgit.check_inputs(logits_fn, tokens, cond, mask_id)
  b, k = tokens.shape
  if noise is not None:
    _check_noise(noise, steps, b, k, v)
  elif rng is None:
    raise ValueError("rng must be a key when noise is None, got None")
  xs = step_tables(k, steps, randomize_temperature, softmax_temperature_annealing, guidance_scale,
                   guidance_decay, guidance_scale_pow)
  xs["s"] = jnp.arange(steps)
  if noise is not None:
    xs["u_tok"], xs["u_conf"] = (jnp.asarray(n, jnp.float32) for n in noise)

  def body(tok, x):
    masked = tok == mask_id
    logits = guided_logits(logits_fn, tok, cond, uncond, x["scale"], guidance_decay)
    logits = maskgit.forbid_mask(logits / x["divisor"], mask_id)
    if noise is None:
      k_tok, k_conf = jax.random.split(jax.random.fold_in(rng, x["s"]))
      u_tok = jax.random.uniform(k_tok, logits.shape, jnp.float32)
      u_conf = jax.random.uniform(k_conf, masked.shape, jnp.float32)
    else:
      u_tok, u_conf = x["u_tok"], x["u_conf"]
    sampled = jnp.argmax(logits + x["temp"] * gumbel(u_tok), -1).astype(jnp.int32)
    conf = jnp.take_along_axis(logits, sampled[..., None], -1)[..., 0]
    conf = jnp.where(masked, conf, jnp.inf) + x["temp"] * gumbel(u_conf)
    sampled = jnp.where(masked, sampled, tok)
    n = jnp.maximum(1, jnp.minimum(jnp.sum(masked, -1) - 1, x["cut"]))  # [B]
    cutoff = jnp.take_along_axis(jnp.sort(conf, -1), (n - 1)[:, None], -1)
    remask = (conf <= cutoff) & masked & (x["s"] < steps - 1)
    new = jnp.where(remask, mask_id, sampled)
    counts = jnp.sum(new == mask_id, -1).astype(jnp.int32)
    return new, ((counts, new) if return_steps else counts)

  out, per_step = jax.lax.scan(body, tokens.astype(jnp.int32), xs)
  return (out, *per_step) if return_steps else (out, per_step)
