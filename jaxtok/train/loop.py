"""The training loop: sharded init or resume, the jitted step, logging, eval, checkpoints, final report.

`train(config, workdir)` runs `config.total_steps` steps of `config.model` on `config.data`:

  * a lock on the workdir (`checkpoint.WorkdirLock`) refuses a second trainer on it;
  * resume: the newest checkpoint in `<workdir>/checkpoints` is checked against this run (config
    fields, state structure: a difference is refused, see `checkpoint.Checkpointer.restore`) and
    restored straight into the target shardings (with the data iterator state), else the state is
    initialised sharded, its model weights taken from `config.init_from` when set (warm start:
    TiTok stage 2, decoder post-training; see `warm_start`);
  * every step: the host batch of this process becomes a global array sharded over the batch axis
    (`jax.make_array_from_process_local_data`), one call to the jitted `train_step`;
  * every `log_every` steps: metrics are fetched (the only host sync), checked for NaN/inf (the error
    names the step range since the last check), written to TensorBoard event files and
    `<workdir>/metrics.jsonl`, and shown on a tqdm bar;
  * every `eval_every` steps: held-out PSNR/SSIM and a PNG grid of reconstructions;
  * every `ckpt_every` steps and at the end: an asynchronous checkpoint, only of a finite state
    (`checkpoint.save_finite`: a diverged state stops the run instead of being saved);
  * at the end: `final_grid.png` (rows = held-out images, columns = original + each token count)
    and `final_metrics.json` (PSNR/SSIM per token count), plus `final.json` with a params checksum.

TensorBoard: `EventWriter` writes the event files through tensorboardX (no TensorFlow needed).

Data (`jaxtok.data.pipeline.from_config`): `config.data.source = "photos"` (default) draws random
crops of the bundled photographs (`jaxtok.data.photos.PhotoCrops`) as a pure function of
(seed, step, process), so its state is one integer and resuming is exact; `"tfds"` reads a named
tensorflow-datasets dataset through `tfds.data_source` with a grain pipeline whose iterator state is
checkpointed the same way. A text-aware tokenizer (TA-TiTok, TexTok: its module defines
`caption_inputs`) reads `jaxtok.data.photo_captions.from_config` instead: the same photo crops as
dict batches {"image", its caption inputs, "caption"} built from `config.text` (the step passes the
caption inputs to train_forward), and the held-out images are scored with their captions.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxtok import sharding as shd
from jaxtok.data import photo_captions
from jaxtok.data import pipeline as data_pipeline
from jaxtok.data import prefetch as prefetch_lib
from jaxtok.data.photos import PhotoCrops, load_photos  # noqa: F401  (re-exported)
from jaxtok.losses import repa as repa_lib
from jaxtok.train import checkpoint as ckpt_lib
from jaxtok.train import evaluate as eval_lib
from jaxtok.train import optim
from jaxtok.train import posttrain
from jaxtok.train import state as state_lib
from jaxtok.train import step as step_lib
from jaxtok.train import warm_start

log = logging.getLogger(__name__)


class EventWriter:
  """Scalar summaries as TensorBoard event files in `logdir` and a JSONL twin `<logdir>/metrics.jsonl`.

  The event files come from tensorboardX's `SummaryWriter` (a maintained writer of the format that
  needs neither TensorFlow nor torch); the JSONL file is for scripts that want no reader at all.
  Only the main process writes (`enabled=False` elsewhere). Each call is flushed, so a killed run
  keeps every logged step.
  """

  def __init__(self, logdir: str, *, enabled: bool = True):
    self.enabled = enabled
    if not enabled:
      return
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    os.makedirs(logdir, exist_ok=True)
    self._tb = SummaryWriter(logdir)
    self._jsonl = open(os.path.join(logdir, "metrics.jsonl"), "a")

  def scalars(self, step: int, values: dict[str, float]) -> None:
    if not self.enabled:
      return
    for tag, v in values.items():
      self._tb.add_scalar(tag, float(v), int(step))
    self._tb.flush()
    self._jsonl.write(json.dumps({"step": int(step), **{k: float(v) for k, v in values.items()}}) + "\n")
    self._jsonl.flush()

  def close(self) -> None:
    if self.enabled:
      self._tb.close()
      self._jsonl.close()


# ==================================================================================================


def check_finite(metrics: dict[str, float], last_checked: int, step: int) -> None:
  """NaN guard: raises FloatingPointError naming the step range (last_checked, step] and the metrics.

  Metrics are fetched only every log_every steps, so the first bad step is somewhere in that range.
  """
  bad = {k: v for k, v in metrics.items() if not np.isfinite(v)}
  if bad:
    raise FloatingPointError(f"non-finite metrics {sorted(bad)} first seen at a step in "
                             f"({last_checked}, {step}]: {bad}")


def params_checksum(params: Any) -> str:
  """sha256 over the bytes of every parameter leaf (in tree order): equal iff bitwise equal."""
  h = hashlib.sha256()
  for leaf in jax.tree.leaves(jax.device_get(params)):
    h.update(np.ascontiguousarray(leaf).tobytes())
  return h.hexdigest()


def _get(cfg: Any, key: str, default: Any) -> Any:
  value = cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)
  return default if value is None else value


def _full_params(state: dict, use_ema: bool):
  """The evaluation weights (EMA if kept) with the model's non-parameter state, on this host.

  With several processes the sharded weights are all-gathered (a collective every process joins) and
  put on this process's first device, so evaluation then runs locally without further collectives.
  """
  from flax import nnx  # pylint: disable=g-import-not-at-top
  params = state["ema_params"] if use_ema and "ema_params" in state else state["params"]
  if "model_state" in state:
    params = nnx.merge_state(params, state["model_state"])
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    params = jax.device_put(multihost_utils.process_allgather(params, tiled=True),
                            jax.local_devices()[0])
  return params


def params_summary(params: Any) -> list[float]:
  """Sum of each parameter leaf in float64 (tree order): for comparing runs up to rounding."""
  return [float(np.sum(np.asarray(x, np.float64))) for x in jax.tree.leaves(params)]


def validate_config(config: Any) -> None:
  """Raises ValueError naming the field for out-of-range training fields."""
  checks = [("total_steps", 1), ("log_every", 1), ("eval_every", 1), ("ckpt_every", 1),
            ("keep_checkpoints", 1)]
  for key, low in checks:
    v = config.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or v < low:
      raise ValueError(f"config.{key} must be an int >= {low}, got {v!r}")
  bs = config.data.get("batch_size")
  if not isinstance(bs, int) or bs < 1:
    raise ValueError(f"config.data.batch_size must be a positive int, got {bs!r}")
  if bs % jax.device_count() and config.get("mesh") is not None:
    n = jax.device_count()
    raise ValueError(f"config.data.batch_size ({bs}) must be divisible by the device count ({n})")
  from jaxtok.tokenizers import api as tok_api  # pylint: disable=g-import-not-at-top
  if config.model.get("name") not in tok_api.MODULES:
    raise ValueError(f"config.model.name must be one of {', '.join(tok_api.MODULES)}, "
                     f"got {config.model.get('name')!r}")
  change = config.get("on_config_change", "error")
  if change not in ckpt_lib.ON_CONFIG_CHANGE:
    raise ValueError(f"config.on_config_change must be one of {ckpt_lib.ON_CONFIG_CHANGE}, got {change!r}")
  ema = config.get("ema_decay", 0.0)
  if not 0.0 <= ema < 1.0:
    raise ValueError(f"config.ema_decay must lie in [0, 1), got {ema}")
  # Pretrained weights come from a warm start or from a model field `*_checkpoint` the model loads
  # at build (Layton's vae_checkpoint); freezing anything else would freeze random weights.
  pretrained = [k for k, v in dict(config.model).items() if k.endswith("_checkpoint") and v]
  if (_get(config.optim, "frozen_patterns", ()) and not pretrained
      and warm_start.settings(config.get("init_from")) is None):
    raise ValueError(f"config.optim.frozen_patterns {list(config.optim.frozen_patterns)} would "
                     "freeze randomly initialised weights: set config.init_from.path to the run "
                     "whose weights this one continues (e.g. the TiTok stage-1 workdir) or load "
                     "pretrained weights at build (a config.model.*_checkpoint field, e.g. "
                     "Layton's vae_checkpoint), got neither")


def train(config: Any, workdir: str, *, show_progress: bool = True) -> dict:
  """Trains (or resumes) `config` in `workdir`; returns the final report dict."""
  from jaxtok.tokenizers import api as tok_api  # pylint: disable=g-import-not-at-top

  validate_config(config)
  os.makedirs(workdir, exist_ok=True)
  # Held until train() returns: a second trainer on this workdir is refused before it touches disk.
  # `cleanup` closes the checkpointer on every exit, so the saves already started (the last finite
  # state) reach the disk even when a NaN guard or an error ends the run.
  with ckpt_lib.WorkdirLock(workdir), contextlib.ExitStack() as cleanup:
    return _train_locked(config, workdir, show_progress=show_progress, cleanup=cleanup)


def _train_locked(config: Any, workdir: str, *, show_progress: bool,
                  cleanup: contextlib.ExitStack) -> dict:
  from jaxtok.tokenizers import api as tok_api  # pylint: disable=g-import-not-at-top

  is_main = jax.process_index() == 0
  mesh = state_lib.mesh_from_config(config)
  rules = state_lib.rules_from_config(config)
  total = int(config.total_steps)

  tokenizer = tok_api.build(config.model)
  model = state_lib.ModelDef(tokenizer.graphdef, tokenizer.init)
  tx = optim.optimizer_from_config(config.optim, total)
  schedule = optim.warmup_cosine(base_lr=float(config.optim.lr), total_steps=total,
                                 warmup_steps=int(_get(config.optim, "warmup_steps", 0)),
                                 end_lr=float(_get(config.optim, "end_lr", 0.0)))
  disc = disc_tx = None
  if config.get("disc") is not None:
    try:
      from jaxtok.nn import discriminator as disc_lib  # pylint: disable=g-import-not-at-top
    except ImportError as err:
      raise ValueError("config.disc is set but jaxtok.nn.discriminator is not available") from err
    if not hasattr(disc_lib, "make_discriminator"):
      raise ValueError("config.disc needs jaxtok.nn.discriminator.make_discriminator(cfg, *, rngs)")
    if config.get("disc_optim") is None:
      raise ValueError("config.disc needs config.disc_optim (the discriminator's AdamW fields)")
    disc_cfg = dict(config.disc)
    disc = state_lib.model_def(lambda rngs: disc_lib.make_discriminator(disc_cfg, rngs=rngs))
    disc_tx = optim.optimizer_from_config(config.disc_optim, total)
  ema_decay = float(config.get("ema_decay", 0.0))
  init_fn = state_lib.make_init_fn(model, tx, ema=ema_decay > 0, disc=disc, disc_tx=disc_tx)
  seed = int(config.get("seed", 0))
  init_rng, step_rng = jax.random.split(jax.random.key(seed))
  abstract, shardings = state_lib.abstract_train_state(init_fn, init_rng, mesh, rules)

  # ---- data
  image_size = int(config.data.image_size)
  heldout_text = None  # caption inputs of the held-out images (text-aware tokenizers)
  if photo_captions.text_module(config.model.get("name")) is not None:
    data, heldout, heldout_text = photo_captions.from_config(
        config, seed=seed, process_index=jax.process_index(), process_count=jax.process_count())
    put = lambda local: {k: jax.make_array_from_process_local_data(
        shd.batch_sharding(mesh, np.ndim(v), rules), v) for k, v in local.items()}
  else:
    data, heldout = data_pipeline.from_config(config.data, seed=seed,
                                              process_index=jax.process_index(),
                                              process_count=jax.process_count())
    batch_sharding = shd.batch_sharding(mesh, 4, rules)
    put = lambda local: jax.make_array_from_process_local_data(batch_sharding, local)
  data = prefetch_lib.DevicePrefetch(data, put, size=int(config.data.get("device_prefetch", 2)))

  # ---- resume or init
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"),
                               keep=int(config.keep_checkpoints))
  cleanup.callback(ckpt.close)
  config_json = ckpt_lib.config_to_json(config)
  restored = ckpt.restore(abstract, config=config_json)
  if restored is not None:
    state, data_state, start = restored
    data.set_state(data_state)
    if is_main:
      log.info("resumed from step %d", start)
  else:
    # A fresh run may warm-start from another run's weights (TiTok stage 2, post-training); a run
    # with checkpoints of its own resumed above and never reads init_from again. Read (and checked)
    # before the init is compiled, so a mismatching source fails at once.
    warm = warm_start.load(config, abstract)
    state = jax.jit(init_fn, out_shardings=shardings)(init_rng)
    start = 0
    if warm is not None:
      state = warm_start.apply(state, warm[0], shardings)
      if is_main:
        log.info("initialised the model from %s (%s weights, step %s)", warm[1]["path"],
                 warm[1]["weights"], warm[1]["step"])
  if is_main:
    log.info("parameters: %d; mesh %s", state_lib.param_count(state), dict(mesh.shape))

  teacher_fn, perceptual_fn, frozen = None, None, {}
  if float(_get(config.get("loss"), "proxy", 0.0)) > 0:
    teacher_fn, frozen["teacher"] = _teacher(config, mesh)
  if float(_get(config.get("loss"), "perceptual", 0.0)) > 0:
    from jaxtok.losses import perceptual  # pylint: disable=g-import-not-at-top
    perceptual_fn, weights = perceptual.from_config(config.get("loss"), config)
    frozen["perceptual"] = jax.device_put(
        weights, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  repa_cfg, repa_fn = repa_lib.settings(config.get("repa")), None
  if repa_cfg is not None:
    repa_fn, dino_params, _ = repa_lib.load_teacher(repa_cfg)
    frozen["repa"] = jax.device_put(
        dino_params, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  resample_fn, post_cfg = None, posttrain.settings(config.get("posttrain"))
  if post_cfg is not None:
    resample_fn, frozen["generator"] = posttrain.load(
        post_cfg, codebook_size=tokenizer.vocab_size, num_tokens=tokenizer.max_tokens, mesh=mesh)
    if is_main:
      log.info("post-training on tokens sampled by the generator in %s (sigma %.2f)",
               post_cfg["generator"], post_cfg["sigma"])
  train_step = step_lib.make_train_step(model, config.get("loss"), tx, state_shardings=shardings,
                                        ema_decay=ema_decay, disc=disc, disc_tx=disc_tx,
                                        perceptual_fn=perceptual_fn, teacher_fn=teacher_fn,
                                        frozen=frozen, lr_schedule=schedule,
                                        frozen_patterns=_get(config.optim, "frozen_patterns", ()),
                                        repa=config.get("repa"), repa_fn=repa_fn,
                                        resample_fn=resample_fn)
  writer = EventWriter(os.path.join(workdir, "tb"), enabled=is_main)
  eval_counts = _token_counts(config, tokenizer)
  use_ema = ema_decay > 0

  def reconstruct(params):
    if heldout_text is not None:
      return eval_lib.captioned_reconstruct_fn(tokenizer, params)
    return eval_lib.reconstruct_fn(tokenizer, params)

  eval_text = None if heldout_text is None else {k: v[:8] for k, v in heldout_text.items()}

  log_every, eval_every, ckpt_every = int(config.log_every), int(config.eval_every), int(config.ckpt_every)
  delay = float(config.get("step_delay_s", 0.0))
  bar = None
  if show_progress and is_main:
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
    bar = tqdm(total=total, initial=start, desc="train", dynamic_ncols=True)
  last_checked = start
  t0, s0 = time.time(), start
  metrics = None
  for step in range(start, total):
    state, metrics = train_step(state, next(data), step_rng)
    done = step + 1
    if delay:
      time.sleep(delay)
    if bar is not None:
      bar.update(1)
    if done % log_every == 0 or done == total:
      host = {k: float(v) for k, v in jax.device_get(metrics).items()}
      check_finite(host, last_checked, done)
      last_checked = done
      rate = (done - s0) / max(time.time() - t0, 1e-9)
      host["steps_per_s"] = rate
      writer.scalars(done, host)
      if bar is not None:
        bar.set_postfix(loss=f"{host['loss']:.4f}", sps=f"{rate:.2f}")
    if done % eval_every == 0 and done != total:
      params = _full_params(state, use_ema)
      em, recons = eval_lib.evaluate(reconstruct(params), heldout[:8], [eval_counts[-1]],
                                     inputs=eval_text)
      key = next(iter(em))
      writer.scalars(done, {"eval/psnr": em[key]["psnr"], "eval/ssim": em[key]["ssim"]})
      if bar is not None:
        bar.write(f"step {done}: held-out PSNR {em[key]['psnr']:.2f} dB, SSIM {em[key]['ssim']:.4f}")
      if is_main:
        eval_lib.save_png(os.path.join(workdir, "images", f"recon_{done:07d}.png"),
                          eval_lib.image_grid(heldout[:8], [recons[key]]),
                          scale=max(1, 64 // image_size))
    if done % ckpt_every == 0 or done == total:
      ckpt_lib.save_finite(ckpt, done, state, data_state=data.get_state(), config=config_json,
                           metrics=metrics)
  if bar is not None:
    bar.close()
  ckpt.wait()

  # ---- final report
  params = _full_params(state, use_ema)
  raw = _full_params(state, False)
  checksum = params_checksum(raw)
  report = {"step": int(jax.device_get(state["step"])), "params_sha256": checksum,
            "params_sums": params_summary(raw)}
  if is_main:
    with open(os.path.join(workdir, "final.json"), "w") as f:
      json.dump(report, f)
  if config.get("final_eval", True):
    extra = {"step": report["step"], "weights": "ema" if use_ema else "params",
             "train_seconds_this_run": time.time() - t0}
    final = eval_lib.final_report(reconstruct(params), heldout, eval_counts, workdir, extra=extra,
                                  inputs=heldout_text) if is_main else {}
    report.update(final)
  ckpt.close()
  writer.close()
  print(f"FINAL step={report['step']} params_sha256={checksum}", flush=True)
  return report


def _teacher(config: Any, mesh: Any):
  """The frozen TiTok stage-1 teacher (a VQGAN): (codes_fn(params, images) -> [B, g*g], params)."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from jaxtok.tokenizers import api as tok_api  # pylint: disable=g-import-not-at-top
  tcfg = config.get("teacher")
  if tcfg is None:
    raise ValueError("loss.proxy > 0 (TiTok stage 1) needs config.teacher (model + checkpoint)")
  teacher = tok_api.build(tcfg.model)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  if tcfg.get("checkpoint"):
    params, _ = ckpt_lib.load_params(tcfg.checkpoint, teacher.abstract_params(),
                                     flag="config.teacher.checkpoint", sharding=replicated)
  elif tcfg.get("random_init_for_smoke_test", False):
    # Only the tiny smoke config does this: it exercises the stage-1 plumbing, not the recipe.
    log.warning("TiTok stage 1 with a RANDOMLY INITIALISED teacher (smoke test only)")
    params = jax.device_put(teacher.init(jax.random.key(int(config.get("seed", 0)) + 17)), replicated)
  else:
    raise ValueError("config.teacher.checkpoint is empty: TiTok stage 1 needs the trained VQGAN "
                     "teacher's parameters (its training workdir, or an orbax checkpoint of its nnx.State)")
  graphdef = teacher.graphdef

  def codes_fn(p, images):
    return nnx.merge(graphdef, p).encode(images).tokens

  return codes_fn, params


def _token_counts(config: Any, tokenizer: Any) -> list[int | None]:
  counts = config.get("eval", {}).get("token_counts", None) if config.get("eval") else None
  k = tokenizer.max_tokens
  if counts:
    out = [int(c) for c in counts]
    if k is not None:
      bad = [c for c in out if not 1 <= c <= k]
      if bad:
        raise ValueError(f"config.eval.token_counts must lie in [1, {k}], got {bad}")
    return out
  return [None]
