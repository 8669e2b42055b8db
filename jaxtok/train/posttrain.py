"""RobusTok generator-sampled decoder post-training ("Image Tokenizer Needs Post-Training", 2509.12474).

The release (qiuk2/RobusTok `post_train_data.py`, `RAR/rar.py generate(prob=sigma)`; notes in
shared/reference/quantizers-and-samplers.md A.7) samples each training image's token sequence from
the trained AR generator (RAR) with teacher forcing: token i is drawn from the generator given the
sequence built so far, then replaced by the ground-truth token with probability sigma (0.7), so
the decoder learns to turn the token sequences a generator actually produces back into the real
image. The release writes those sequences' decoded images to disk and fine-tunes the decoder on
(generated, original) pairs for 100 epochs. Here the sequences are drawn inside the train step
from the frozen generator for every batch (fresh sequences every step instead of one fixed set,
and the tokens go to the decoder directly instead of through a PNG and the frozen encoder).

`config.posttrain` fields (`settings`): generator (a generator training run's workdir, or a
`tools/convert.py --model rar|...` output, of a causal generator: gpt or rar over this tokenizer's
tokens), sigma (ground-truth keep probability, 0.7), temperature (1.0), cfg_scale / cfg_schedule /
cfg_power (guidance, used only when the generator is class-conditional and the batch carries
labels; the release's example command uses 16.0, power-cosine, 2.75), use_ema (True).
"""
from __future__ import annotations

import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

KEYS = ("generator", "sigma", "temperature", "cfg_scale", "cfg_schedule", "cfg_power", "use_ema")
DEFAULTS = dict(sigma=0.7, temperature=1.0, cfg_scale=1.0, cfg_schedule="constant", cfg_power=1.0,
                use_ema=True)
CAUSAL = ("gpt", "rar")


def settings(section: Any) -> dict | None:
  """The validated `config.posttrain` dict, or None when the section is absent."""
  if section is None:
    return None
  cfg = dict(section.to_dict() if hasattr(section, "to_dict") else section)
  unknown = sorted(set(cfg) - set(KEYS))
  if unknown:
    raise ValueError(f"config.posttrain has unknown fields {unknown}; expected some of {KEYS}")
  out = dict(DEFAULTS, **{k: v for k, v in cfg.items() if v is not None})
  if not isinstance(out.get("generator"), str) or not out["generator"]:
    raise ValueError("config.posttrain.generator must be the workdir of a trained causal generator "
                     f"({'/'.join(CAUSAL)} over this tokenizer's tokens, e.g. --config.posttrain."
                     f"generator=runs/rar), got {out.get('generator')!r}")
  sigma = float(out["sigma"])
  if not 0.0 <= sigma <= 1.0:
    raise ValueError(f"config.posttrain.sigma must lie in [0, 1], got {sigma}")
  if float(out["temperature"]) < 0:
    raise ValueError(f"config.posttrain.temperature must be >= 0, got {out['temperature']}")
  from jaxtok.samplers import guidance  # pylint: disable=g-import-not-at-top
  guidance.check_schedule(out["cfg_schedule"])
  guidance.check_scale(float(out["cfg_scale"]))
  out.update(sigma=sigma, temperature=float(out["temperature"]), cfg_scale=float(out["cfg_scale"]),
             cfg_power=float(out["cfg_power"]), use_ema=bool(out["use_ema"]))
  return out


def _load(path: str, use_ema: bool):
  """(model config, graphdef, params) of a generator run's newest checkpoint or a converted release."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from jaxtok.train import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  from jaxtok.train import generator  # pylint: disable=g-import-not-at-top
  if os.path.isfile(os.path.join(path, "config.json")) and os.path.isdir(os.path.join(path, "params")):
    from jaxtok import convert  # pylint: disable=g-import-not-at-top
    gcfg, graphdef, params = convert.load_converted_generator(path)
    return ml_collections.ConfigDict(gcfg), graphdef, params
  stored = ckpt_lib.read_config(os.path.join(path, "checkpoints"), flag="config.posttrain.generator")
  if stored is None or "model" not in stored:
    raise ValueError(f"config.posttrain.generator: {path} holds no generator run config (expected a "
                     f"tools/train_generator.py workdir or a tools/convert.py output)")
  config = ml_collections.ConfigDict(stored)
  graphdef, params = generator.load_params(config, path, use_ema=use_ema)
  return config.model, graphdef, params


def load(cfg: dict, *, codebook_size: int, num_tokens: int, mesh: Any = None
         ) -> tuple[Callable, Any]:
  """(resample_fn, params) of the frozen generator named by `cfg` (`settings`).

  resample_fn(params, tokens int32 [B, N], labels int32 [B] or None, rng) -> (tokens int32 [B, N],
  metrics): the teacher-forced sample (module docstring); metrics["posttrain/changed"] is the share
  of positions whose token differs from the input.
  """
  gcfg, graphdef, params = _load(cfg["generator"], cfg["use_ema"])
  name = gcfg.get("name")
  if name not in CAUSAL:
    raise ValueError(f"config.posttrain.generator must be a causal generator ({CAUSAL}): teacher "
                     f"forcing feeds each drawn token back, got model.name {name!r}")
  if int(gcfg.codebook_size) != int(codebook_size):
    raise ValueError(f"config.posttrain.generator models {gcfg.codebook_size} codes, the tokenizer "
                     f"has codebook_size {codebook_size}")
  if int(gcfg.seq_len) != int(num_tokens):
    raise ValueError(f"config.posttrain.generator has seq_len {gcfg.seq_len}, the tokenizer makes "
                     f"{num_tokens} tokens per image")
  if mesh is not None:
    params = jax.device_put(params, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  return make_resample_fn(graphdef, cfg), params


def make_resample_fn(graphdef: Any, cfg: dict) -> Callable:
  """resample_fn of `load` for a generator graphdef (GPT / RAR interface: condition_ids, null_id,
  num_classes, init_cache, prefill, step)."""
  from jaxtok.samplers import autoregressive  # pylint: disable=g-import-not-at-top

  def resample(params, tokens, labels, rng):
    model = nnx.merge(graphdef, params)
    b, n = tokens.shape
    k_keep, k_draw = jax.random.split(rng)
    keep = jax.random.uniform(k_keep, (b, n)) < cfg["sigma"]
    prompt = model.condition_ids(labels, b)[:, None]
    guided = labels is not None and int(model.num_classes) > 0 and cfg["cfg_scale"] != 1.0
    uncond = jnp.full_like(prompt, model.null_id) if guided else None
    out = autoregressive.sample(
        k_draw, model.prefill, model.step, model.init_cache(2 * b if guided else b), prompt,
        num_tokens=n, temperature=cfg["temperature"], uncond_prompt_tokens=uncond,
        cfg_scale=cfg["cfg_scale"], cfg_schedule=cfg["cfg_schedule"], cfg_power=cfg["cfg_power"],
        forced=(tokens.astype(jnp.int32), keep))
    out = jax.lax.stop_gradient(out)
    return out, {"posttrain/changed": jnp.mean((out != tokens).astype(jnp.float32))}

  return resample
