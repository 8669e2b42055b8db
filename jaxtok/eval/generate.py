"""One jitted `sample(rng, labels) -> tokens` per generator kind, over a trained generator's weights.

  gpt      jaxtok.samplers.autoregressive.sample with the GPT's preallocated KV cache (prefill the
           condition id, then one cached step per token); `num_tokens` <= seq_len generates only a
           prefix (ordered tokens, FlexTok / One-D-Piece, decode any prefix);
  token_shuffle  the same sampler over the Token-Shuffle model's windows (one step draws the s^2
           tokens of a window as a group; always the whole grid);
  nar      jaxtok.samplers.neighbor: one cached model call per diagonal of the grid (2n - 1 calls
           for n x n tokens);
  rar      the same with RAR's cache, in raster order (the release's procedure: `cfg_schedule`
           "power-cosine" with `cfg_power`, temperature);
  maskgit  jaxtok.samplers.maskgit from all-mask tokens (mask id = codebook size; also
           "maskgit_official", a converted released TiTok generator): `mode` "maskgit"
           (google-research/maskgit, the default) or "titok" (the released TiTok / One-D-Piece
           generators' procedure, `maskgit_released`, settings from `preset`, any of
           its settings overriding; guidance always runs for a class-conditional model there);
  any_order  jaxtok.samplers.assd over uniformly random orders, `steps` (default 4) positions
           drafted per iteration, exact for the model's sequential sampling; no guidance;
  mar      jaxtok.samplers.mar.sample with the MAR transformer as the condition function and its
           FlowHead (t = 1 noise) adapted by `flow.flip_time`; DiSA step annealing of the head.
  ecar     jaxtok.samplers.ecar.sample: one condition call and one window of head steps per stage
           (head_steps at the first stage annealed to head_steps_lower at the last).
  tokenbridge  the mar loop with `tokenbridge.sample_head` (CFG on the backbone features); returns
           the dequantized latents float32 [B, N, D];
  cubid    jaxtok.samplers.cubid over the [N, D] cube of level indices (MaskGIT steps, confidence
           choice); returns the dequantized latents float32 [B, N, D].
  xar      jaxtok.samplers.next_x: entity by entity, `steps` flow steps each (default 40), each step
           over the current entity against the KV cache of the clean context (`sample_cached`);
           `flow_method` "euler" (default) / "heun" (ODE) or "sde" (the release's Euler-Maruyama).
  himar    jaxtok.samplers.himar: MAR's loop over the pivots (4 x their grid side iterations),
           then over the dense tokens (`steps`), the scale-aware head told the phase; DiSA as mar.
  resgen, binary_diffusion, binary_ar   the generator module's own `generate(model, rng, labels,
           opts)` (samplers.resgen; samplers.binary_diffusion; the cached loop of
           generators.binary_ar); tokens int32 [B, N, Q] (RVQ levels) or [B, N, n] (bits).
Labels int32 [B], -1 = unconditional. Classifier-free guidance runs only when the generator is
class-conditional (num_classes > 0) and cfg_scale != 1; the null condition is the model's null id.

`Options` gathers the knobs; `options_from_config(config.sampling, **overrides)` fills it from a
generator config's `sampling` block (None overrides keep the config's value).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxtok.samplers import guidance


@dataclasses.dataclass(frozen=True)
class Options:
  temperature: float = 1.0
  top_k: int | None = None          # None / 0: no top-k filter
  top_p: float | None = None        # None / 1.0: no nucleus filter
  cfg_scale: float = 1.0
  cfg_schedule: str | None = None  # None: the sampler's default (constant; MAR: linear)
  cfg_power: float = 1.0            # the "power-cosine" schedule's power (RAR)
  steps: int | None = None          # MaskGIT steps / MAR iterations (None: the config's)
  schedule: str = "cosine"          # MaskGIT mask schedule
  choice_temperature: float = 4.5   # MaskGIT re-masking noise
  head_steps: int = 50              # MAR: the head's flow steps at the first iteration (DiSA upper)
  head_steps_lower: int | None = None  # MAR: at the last iteration (None: = head_steps, no annealing)
  annealing: str = "linear"         # MAR: DiSA strategy
  num_tokens: int | None = None     # GPT: generate this prefix only (None: seq_len)
  # GPT / RAR: run the cached loop in segments of this many tokens, each step reading only the
  # filled cache slots (same tokens; one compiled step per segment). None: one loop.
  segment: int | None = None
  mode: str = "maskgit"             # MaskGIT procedure: "maskgit" | "titok" (the released one)
  # mode "titok" only: a `maskgit_released.PRESETS` name and settings overriding it (None: preset's)
  preset: str | None = None
  guidance_scale: float | None = None
  guidance_decay: str | None = None
  guidance_scale_pow: float | None = None
  randomize_temperature: float | None = None
  softmax_temperature_annealing: bool | None = None
  flow_method: str | None = None    # xAR: "euler" | "heun" | "sde" (next_x's methods; None: euler)
  protocol: int = 1                 # binary diffusion: the release's sampler protocol (1 | 2)
  bit_delta: float = 0.0            # binary AR: the release's within-token bit bias (0: independent)

  def titok_settings(self) -> dict[str, Any]:
    """The `maskgit_released.sample` settings (preset, then the ones set here; `steps` too)."""
    from jaxtok.samplers import maskgit_released  # pylint: disable=g-import-not-at-top
    out = maskgit_released.preset(self.preset) if self.preset is not None else {}
    for key in TITOK_KEYS + ("steps",):
      if getattr(self, key) is not None:
        out[key] = getattr(self, key)
    return out


TITOK_KEYS = ("guidance_scale", "guidance_decay", "guidance_scale_pow", "randomize_temperature",
              "softmax_temperature_annealing")


def options_from_config(sampling: Any, **overrides: Any) -> Options:
  """Options from a config's `sampling` block (names as in configs/*), then non-None overrides."""
  s = dict(sampling or {})
  kw: dict[str, Any] = {}
  unknown = sorted(set(s) - SAMPLING_KEYS)
  if unknown:
    raise ValueError(f"unknown config.sampling key(s) {unknown}; valid keys: {sorted(SAMPLING_KEYS)}")
  for key in ("temperature", "top_k", "top_p", "cfg_scale", "cfg_schedule", "cfg_power",
              "schedule", "choice_temperature", "annealing", "mode", "preset",
              "flow_method", "protocol", "bit_delta", "segment") + TITOK_KEYS:
    if key in s:
      kw[key] = s[key]
  if "num_steps" in s:
    kw["steps"] = s["num_steps"]
  if "num_iters" in s:
    kw["steps"] = s["num_iters"]
  if "head_steps_upper" in s:
    kw["head_steps"] = s["head_steps_upper"]
  if "head_steps_lower" in s:
    kw["head_steps_lower"] = s["head_steps_lower"]
  kw.update({k: v for k, v in overrides.items() if v is not None})
  if kw.get("mode", "maskgit") not in ("maskgit", "titok"):
    raise ValueError(f"sampling mode must be 'maskgit' or 'titok', got {kw['mode']!r}")
  if kw.get("mode") == "titok" and overrides.get("cfg_scale") is not None:
    kw["guidance_scale"] = overrides["cfg_scale"]  # --cfg_scale is the released guidance scale there
  # The samplers read 0 / None as "the default" (`opts.steps or ...`): an explicit 0 or a negative
  # count must fail here instead of silently becoming the default.
  for key in ("steps", "head_steps", "head_steps_lower", "num_tokens", "segment"):
    v = kw.get(key)
    if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1):
      raise ValueError(f"{key} must be an int >= 1 (leave it unset for the config's default), got "
                       f"{v!r}")
  if "cfg_scale" in kw:
    guidance.check_scale(kw["cfg_scale"])
  if kw.get("top_k") in (0,):
    kw["top_k"] = None
  if kw.get("top_p") is not None and float(kw["top_p"]) >= 1.0:
    kw["top_p"] = None
  return Options(**kw)


SAMPLING_KEYS = frozenset({"temperature", "top_k", "top_p", "cfg_scale", "cfg_schedule",
                           "cfg_power", "schedule", "choice_temperature", "annealing", "mode", "preset", "num_steps",
                           "num_iters", "head_steps_upper", "head_steps_lower", "flow_method",
                           "protocol", "bit_delta", "segment"}
                          | set(TITOK_KEYS))


def _guided(model, opts: Options) -> bool:
  return int(getattr(model, "num_classes", 0)) > 0 and float(opts.cfg_scale) != 1.0


def _ar_setup(model, labels, opts: Options):
  """(condition prompt [B, 1], cache, sampler keywords) shared by the AR kinds (gpt, token_shuffle,
  nar): guidance runs with the null id as the unconditional prompt over a 2B cache."""
  b = labels.shape[0]
  prompt = model.condition_ids(labels, b)[:, None]
  guided = _guided(model, opts)
  uncond = jnp.full_like(prompt, model.null_id) if guided else None
  cache = model.init_cache(2 * b if guided else b)
  return prompt, cache, dict(temperature=opts.temperature, top_k=opts.top_k, top_p=opts.top_p,
                             uncond_prompt_tokens=uncond, cfg_scale=opts.cfg_scale,
                             cfg_schedule=opts.cfg_schedule or "constant",
                             cfg_power=opts.cfg_power)


def _gpt(model, rng, labels, opts: Options):
  from jaxtok.samplers import autoregressive  # pylint: disable=g-import-not-at-top
  n = opts.num_tokens or model.seq_len
  if not 1 <= n <= model.seq_len:
    raise ValueError(f"--num_tokens must be in [1, seq_len={model.seq_len}], got {n}")
  prompt, cache, kw = _ar_setup(model, labels, opts)
  return autoregressive.sample(
      rng, model.prefill, model.step, cache, prompt, num_tokens=n, segment=opts.segment,
      segment_fn=getattr(model, "prepare_segment", None) if opts.segment else None, **kw)


def _whole_grid(model, opts: Options, kind: str) -> None:
  if opts.num_tokens not in (None, model.seq_len):
    raise ValueError(f"--num_tokens: {kind} generates the whole grid of seq_len={model.seq_len} "
                     f"tokens, got {opts.num_tokens}")


def _token_shuffle(model, rng, labels, opts: Options):
  from jaxtok.samplers import autoregressive  # pylint: disable=g-import-not-at-top
  _whole_grid(model, opts, "token_shuffle")
  prompt, cache, kw = _ar_setup(model, labels, opts)
  windows = autoregressive.sample(rng, model.prefill, model.step, cache, prompt,
                                  num_tokens=model.num_windows, **kw)
  return model.tokens_from_windows(windows)


def _nar(model, rng, labels, opts: Options):
  from jaxtok.samplers import neighbor  # pylint: disable=g-import-not-at-top
  _whole_grid(model, opts, "nar")
  prompt, cache, kw = _ar_setup(model, labels, opts)
  return neighbor.sample(rng, model.prefill, model.step, cache, prompt, diagonals=model.diag, **kw)


def _maskgit(model, rng, labels, opts: Options):
  from jaxtok.samplers import maskgit  # pylint: disable=g-import-not-at-top
  b = labels.shape[0]
  tokens = jnp.full((b, model.seq_len), model.mask_id, jnp.int32)
  if opts.mode == "titok":
    conditional = int(getattr(model, "num_classes", 0)) > 0
    out, _ = maskgit.sample_mode(
        "titok", rng, lambda tok, cond: model(tok, cond), tokens, mask_id=model.mask_id,
        cond=labels if conditional else None,
        uncond=jnp.full_like(labels, -1) if conditional else None, **opts.titok_settings())
    return out
  guided = _guided(model, opts)
  out, _ = maskgit.sample(rng, lambda tok, cond: model(tok, cond), tokens, mask_id=model.mask_id,
                          steps=opts.steps or min(8, model.seq_len), schedule=opts.schedule,
                          temperature=opts.temperature, choice_temperature=opts.choice_temperature,
                          top_k=opts.top_k, top_p=opts.top_p, cond=labels,
                          uncond=jnp.full_like(labels, -1) if guided else None,
                          cfg_scale=opts.cfg_scale, cfg_schedule=opts.cfg_schedule or "constant")
  return out


def _mar(model, rng, labels, opts: Options):
  from jaxtok.samplers import flow, mar, schedules  # pylint: disable=g-import-not-at-top
  b = labels.shape[0]
  steps = opts.steps or min(64, model.seq_len)
  lower = opts.head_steps_lower or opts.head_steps
  head_steps = schedules.disa_steps(opts.annealing, steps, opts.head_steps, lower) \
      if lower != opts.head_steps else opts.head_steps
  head = flow.flip_time(lambda x, t, z: model.head(x, jnp.full((x.shape[0],), t), z))
  guided = _guided(model, opts)
  out = mar.sample(rng, lambda tok, mask, cond: model.condition(tok, mask, cond), head, batch=b,
                   num_tokens=model.seq_len, token_dim=model.token_dim, steps=steps,
                   head_steps=head_steps, cond=labels,
                   uncond=jnp.full_like(labels, -1) if guided else None,
                   cfg_scale=opts.cfg_scale,
                   cfg_schedule=opts.cfg_schedule or "linear",
                   temperature=opts.temperature)
  return out.tokens


def _ecar(model, rng, labels, opts: Options):
  from jaxtok.samplers import ecar, schedules  # pylint: disable=g-import-not-at-top
  _whole_grid(model, opts, "ecar")
  lower = opts.head_steps_lower or opts.head_steps
  head_steps = (schedules.disa_steps(opts.annealing, model.num_stages, opts.head_steps, lower)
                if lower != opts.head_steps else opts.head_steps)
  guided = _guided(model, opts)
  out = ecar.sample(rng, model.stage_condition, model.velocity, batch=labels.shape[0],
                    grid_side=model.grid_side, token_dim=model.token_dim,
                    num_stages=model.num_stages, head_steps=head_steps, cond=labels,
                    uncond=jnp.full_like(labels, -1) if guided else None,
                    cfg_scale=opts.cfg_scale, cfg_schedule=opts.cfg_schedule or "constant",
                    cfg_power=opts.cfg_power, temperature=opts.temperature)
  return out.tokens


def _tokenbridge(model, rng, labels, opts: Options):
  """MAR's loop with TokenBridge's categorical channel head; returns dequantized latents [B, N, D]."""
  from jaxtok.generators import tokenbridge  # pylint: disable=g-import-not-at-top
  from jaxtok.samplers import mar  # pylint: disable=g-import-not-at-top
  guided = _guided(model, opts)

  def head_sampler(key, zc, zu, scale):  # guidance on the backbone features, as the release
    return tokenbridge.sample_head(model, key, zc, zu, scale, temperature=opts.temperature,
                                   top_k=opts.top_k, top_p=opts.top_p)

  out = mar.sample(rng, lambda tok, mask, cond: model.condition(tok, mask, cond), None,
                   batch=labels.shape[0], num_tokens=model.seq_len, token_dim=model.token_dim,
                   steps=opts.steps or min(64, model.seq_len), head_steps=1, cond=labels,
                   uncond=jnp.full_like(labels, -1) if guided else None, cfg_scale=opts.cfg_scale,
                   cfg_schedule=opts.cfg_schedule or "linear", head_sampler=head_sampler,
                   cfg_min_masked=1)
  return out.tokens


def _cubid(model, rng, labels, opts: Options):
  """CubiD's element-wise masked decoding of the [T, D] cube; returns dequantized latents."""
  from jaxtok.samplers import cubid  # pylint: disable=g-import-not-at-top
  guided = _guided(model, opts)
  grid = jnp.full((labels.shape[0], model.seq_len, model.token_dim), model.mask_id, jnp.int32)
  out, _ = cubid.sample(rng, lambda g, cond: model(g, cond), grid, mask_id=model.mask_id,
                        steps=opts.steps or min(16, model.seq_len * model.token_dim),
                        schedule=opts.schedule, temperature=opts.temperature,
                        choice_temperature=opts.choice_temperature, top_k=opts.top_k,
                        top_p=opts.top_p, cond=labels,
                        uncond=jnp.full_like(labels, -1) if guided else None,
                        cfg_scale=opts.cfg_scale, cfg_schedule=opts.cfg_schedule or "constant")
  return model.dequantize(out)


def _any_order(model, rng, labels, opts: Options):
  """ASSD (`samplers.assd`) over uniformly random orders, drafting `steps` positions per iteration
  (default 4); no guidance."""
  from jaxtok.generators import any_order  # pylint: disable=g-import-not-at-top
  from jaxtok.samplers import assd  # pylint: disable=g-import-not-at-top
  k = opts.steps or 4
  orders = any_order.random_orders(jax.random.fold_in(rng, 1), labels.shape[0], model.seq_len)
  return assd.sample(rng, lambda s, o, c, y: model.parallel_logits(s, o, c, k, y),
                     model.chain_logits, orders, num_draft=k, cond=labels,
                     temperature=opts.temperature, top_k=opts.top_k, top_p=opts.top_p)[0]


def _xar(model, rng, labels, opts: Options):
  from jaxtok.samplers import next_x  # pylint: disable=g-import-not-at-top
  _whole_grid(model, opts, "xar")
  guided = _guided(model, opts)
  seq = next_x.sample_cached(rng, model.extend, model.init_cache, batch=labels.shape[0],
                             entity_ids=model.entity_ids, token_dim=model.token_dim,
                             steps=opts.steps or 40, method=opts.flow_method or "euler",
                             cond=labels,
                             uncond=jnp.full_like(labels, -1) if guided else None,
                             cfg_scale=opts.cfg_scale, cfg_schedule=opts.cfg_schedule or "linear",
                             cfg_power=opts.cfg_power, temperature=opts.temperature)
  return model.tokens_from_sequence(seq)


def _himar(model, rng, labels, opts: Options):
  from jaxtok.samplers import flow, himar, schedules  # pylint: disable=g-import-not-at-top
  _whole_grid(model, opts, "himar")
  steps = opts.steps or min(64, model.seq_len)
  lower = opts.head_steps_lower or opts.head_steps
  anneal = lambda n: (schedules.disa_steps(opts.annealing, n, opts.head_steps, lower)
                      if lower != opts.head_steps else opts.head_steps)
  head = lambda x, t, z, phase: flow.flip_time(
      lambda x, t, z: model.head_velocity(x, jnp.full((x.shape[0],), t), z, phase))(x, t, z)
  guided = _guided(model, opts)
  out = himar.sample(rng, model.condition_pivots, model.condition_dense, head,
                     batch=labels.shape[0], num_pivots=model.num_pivots, num_tokens=model.seq_len,
                     token_dim=model.token_dim, pivot_steps=model.pivot_iters, steps=steps,
                     head_steps=anneal(steps), pivot_head_steps=anneal(model.pivot_iters),
                     labels=labels, uncond=jnp.full_like(labels, -1) if guided else None,
                     cfg_scale=opts.cfg_scale, cfg_schedule=opts.cfg_schedule or "linear",
                     temperature=opts.temperature)
  return out.tokens


def _by_module(model, rng, labels, opts: Options):
  """The generator module's own `generate(model, rng, labels, opts)` (resgen, binary_diffusion,
  binary_ar)."""
  import sys  # pylint: disable=g-import-not-at-top
  return sys.modules[type(model).__module__].generate(model, rng, labels, opts)


# RAR has GPT's interface (condition_ids, null_id, init_cache, prefill, step, seq_len); a converted
# official TiTok MaskGIT generator ("maskgit_official", jaxtok.convert.maskgit) has MaskGIT's.
SAMPLERS = {"gpt": _gpt, "rar": _gpt, "maskgit": _maskgit, "maskgit_official": _maskgit, "mar": _mar,
            "token_shuffle": _token_shuffle, "nar": _nar, "ecar": _ecar, "any_order": _any_order}
SAMPLERS.update(tokenbridge=_tokenbridge, cubid=_cubid)
SAMPLERS.update(xar=_xar, himar=_himar)
SAMPLERS.update(resgen=_by_module, binary_diffusion=_by_module, binary_ar=_by_module)
SAMPLERS.update(gpstoken_gen=_by_module)  # labels: {"label", "layout", "mean", "std"} (`sampling_labels`)


def make_sampler(name: str, graphdef: Any, params: Any, opts: Options) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """A jitted `sample(rng, labels int32 [B]) -> tokens` (int32 [B, N], or float32 [B, N, D] for mar)."""
  if name not in SAMPLERS:
    raise ValueError(f"config.model.name must be one of {sorted(SAMPLERS)}, got {name!r}")
  body = SAMPLERS[name]

  @jax.jit
  def sample(params, rng, labels):
    labels = labels if isinstance(labels, dict) else jnp.asarray(labels, jnp.int32)
    return body(nnx.merge(graphdef, params), rng, labels, opts)

  return lambda rng, labels: sample(params, rng, labels)


def sampling_labels(gcfg: Any, meta: dict) -> Callable[[np.ndarray], Any]:
  """Host fn class ids int32 [B] -> the labels argument of `make_sampler`'s sample: the ids, or
  for gpstoken_gen {"label", "layout", "mean", "std"} with layouts popped from the layout bank of
  the token dataset the run trained on (`meta`: its data_meta.json)."""
  if gcfg.get("name") != "gpstoken_gen":
    return lambda labels: labels
  from jaxtok.generators import gpstoken_gen  # pylint: disable=g-import-not-at-top
  return gpstoken_gen.LayoutBank.from_meta(gcfg, meta).labels


def _maskgen(model, rng, cond, null, opts: Options):
  """MaskGen-VQ from text: the release's procedure (`generators.maskgen.SAMPLING`), any setting given
  in opts (steps, guidance_scale or cfg_scale, randomize_temperature, guidance_decay, ...) winning."""
  from jaxtok.generators import maskgen  # pylint: disable=g-import-not-at-top
  settings = opts.titok_settings()
  if "guidance_scale" not in settings and float(opts.cfg_scale) != 1.0:
    settings["guidance_scale"] = opts.cfg_scale
  return maskgen.sample(model, rng, cond, null, **settings)


def _maskgen_kl(model, rng, cond, null, opts: Options):
  """MaskGen-KL from text: `generators.maskgen_kl.SAMPLING` with opts' steps, cfg_schedule,
  temperature and cfg_scale (1, the Options default, keeps the release's 3 as for MaskGen-VQ);
  continuous tokens float32 [B, K, D] (unscaled VAE latents)."""
  from jaxtok.generators import maskgen_kl  # pylint: disable=g-import-not-at-top
  settings = dict(temperature=opts.temperature)
  if float(opts.cfg_scale) != 1.0:
    settings["cfg_scale"] = opts.cfg_scale
  if opts.steps:
    settings["steps"] = opts.steps
  if opts.cfg_schedule:
    settings["cfg_schedule"] = opts.cfg_schedule
  return maskgen_kl.sample(model, rng, cond, null, **settings)


def _flowtok(model, rng, cond, null, opts: Options):
  """FlowTok from text: image tokens float32 [B, K, D] by `generators.flowtok.sample` (Euler,
  opts.steps or 50, guidance by its indicator at opts.cfg_scale; null unused)."""
  from jaxtok.generators import flowtok  # pylint: disable=g-import-not-at-top
  return flowtok.sample(model, rng, cond, null, steps=opts.steps or 50, cfg_scale=opts.cfg_scale)


# Text-conditioned generators: condition dicts from a caption's CLIP features instead of class ids.
TEXT_SAMPLERS = {"maskgen": _maskgen}
TEXT_SAMPLERS.update(maskgen_kl=_maskgen_kl)
TEXT_SAMPLERS.update(flowtok=_flowtok)


def make_text_sampler(name: str, graphdef: Any, params: Any,
                      opts: Options) -> Callable[[jax.Array, Any, Any], jax.Array]:
  """A jitted `sample(rng, cond, null) -> tokens` for a text-conditioned generator (int32 [B, N]
  for MaskGen-VQ, float32 [B, N, D] for MaskGen-KL and FlowTok);
  cond / null: the model's condition dicts (`generators.maskgen.text_condition`), null the empty
  caption's ([1, ...] rows broadcast), None for unguided sampling."""
  if name not in TEXT_SAMPLERS:
    raise ValueError(f"text prompts need a text-conditioned generator ({sorted(TEXT_SAMPLERS)}), "
                     f"got config.model.name {name!r}")
  body = TEXT_SAMPLERS[name]

  @jax.jit
  def sample(params, rng, cond, null):
    return body(nnx.merge(graphdef, params), rng, cond, null, opts)

  return lambda rng, cond, null: sample(params, rng, cond, null)
