"""Training generators on pre-tokenized data: one jitted step, sharded state, checkpoints, resume.

Generators (config.model.name):
  gpt       causal AR over discrete tokens      (jaxtok.generators.gpt)   e.g. FlexTok tokens
  token_shuffle  causal AR over s x s windows of a token grid (jaxtok.generators.token_shuffle)
  nar       next-neighbour AR over a token grid (jaxtok.generators.nar)   e.g. VQGAN tokens
  rar       causal AR, randomized orders        (jaxtok.generators.rar)   e.g. MaskGIT-VQ tokens
  maskgit   bidirectional masked over discrete  (jaxtok.generators.bert)  e.g. TiTok tokens
  mar       masked over continuous tokens       (jaxtok.generators.mar)   e.g. VAE tokens
  ecar      stage-wise multistage flow, continuous (jaxtok.generators.ecar) e.g. VAE tokens
  maskgen   text-to-image masked (MaskGen-VQ)   (jaxtok.generators.maskgen) TA-TiTok tokens; its
            labels are a text-condition dict (see that module), not class ids
  maskgen_kl  MaskGen-KL: the same over continuous TA-TiTok VAE tokens, MAR's DDPM head
            (jaxtok.generators.maskgen_kl); labels as maskgen's
  flowtok   text <-> image-token flow matching (generators.flowtok): maskgen's label dict, float tokens
  tokenbridge  MAR over dimension-wise quantized VAE tokens, channel-AR head (generators.tokenbridge)
  cubid     masked diffusion over (token, dimension) elements of quantized tokens (generators.cubid)
  xar       next-X flow AR over continuous tokens (jaxtok.generators.xar) e.g. VAE tokens
  himar     pivots then masked AR, continuous   (jaxtok.generators.himar) e.g. VAE tokens
  resgen    masked RVQ, sum-of-codes MoG head   (jaxtok.generators.resgen) e.g. RVQ TiTok tokens
  binary_diffusion / binary_ar  Bernoulli diffusion / AR over bit tokens (Instella-T2I bits)
  gpstoken_gen  SiT flow over normalised GPSToken tokens given initial layouts (generators.gpstoken_gen;
            labels {"label", "layout", "mean", "std"} from the module's `batch_labels`)
Each module has `make_model(cfg, *, rngs)` and `loss(model, tokens, labels, *, rng, train, step) ->
(loss, metrics)`, `step` being the number of completed updates (int32, traced; RAR anneals its
random-order chance with it, the others ignore it). The data are a token dataset written by
tools/pretokenize.py (jaxtok.data.tokens), read by grain, one slice per process. The state, its sharding, the optimizer and the checkpoints are the
tokenizer trainer's (jaxtok.train.state / optim / checkpoint), so a generator run resumes exactly
like a tokenizer run: the per-step key is fold_in(base, step) and the iterator state is checkpointed.

Text-conditioned generators: a generator module that defines `text_condition(features) -> dict`
(MaskGen; its `labels` are that dict plus "null_<key>" entries, the empty caption's, for caption
dropout) is trained on a token dataset holding captions (tools/pretokenize.py on a TA-TiTok run:
`tokens.read_captions`): each batch's "caption" rows of the dataset's caption features become
`labels` = text_condition(rows) | {"null_" + k: text_condition(empty caption)[k]} (`text_labels`).
Any other generator reads the int32 class labels as before.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import logging
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxtok import sharding as shd
from jaxtok.data import tokens as token_data
from jaxtok.train import checkpoint as ckpt_lib
from jaxtok.train import optim
from jaxtok.train import state as state_lib

log = logging.getLogger(__name__)

GENERATORS = {"gpt": "jaxtok.generators.gpt", "maskgit": "jaxtok.generators.bert",
              "mar": "jaxtok.generators.mar", "token_shuffle": "jaxtok.generators.token_shuffle",
              "nar": "jaxtok.generators.nar", "rar": "jaxtok.generators.rar",
              "ecar": "jaxtok.generators.ecar",
              "maskgen": "jaxtok.generators.maskgen",
              "any_order": "jaxtok.generators.any_order",
              "xar": "jaxtok.generators.xar", "himar": "jaxtok.generators.himar",
              "resgen": "jaxtok.generators.resgen",
              "binary_diffusion": "jaxtok.generators.binary_diffusion",
              "binary_ar": "jaxtok.generators.binary_ar"}
GENERATORS.update(tokenbridge="jaxtok.generators.tokenbridge", cubid="jaxtok.generators.cubid")
GENERATORS.update(maskgen_kl="jaxtok.generators.maskgen_kl")
GENERATORS.update(flowtok="jaxtok.generators.flowtok")
GENERATORS.update(gpstoken_gen="jaxtok.generators.gpstoken_gen")
GENERATORS.update(instella_diff="jaxtok.generators.instella_t2i",
                  instella_ar="jaxtok.generators.instella_t2i")


def generator_module(name: str):
  if name not in GENERATORS:
    raise ValueError(f"generator name must be one of {sorted(GENERATORS)}, got {name!r}")
  return importlib.import_module(GENERATORS[name])


def make_train_step(name: str, model: state_lib.ModelDef, tx: optax.GradientTransformation, *,
                    ema_decay: float = 0.0) -> Callable:
  """`train_step(state, batch, rng) -> (state, metrics)` for generator `name` (not yet jitted).

  batch: {"tokens": int32 [B, N] or float [B, N, D], "label": int32 [B] (-1 = unconditional), or
  a text-conditioned generator's condition dict (`text_labels`)}.
  """
  module = generator_module(name)

  def step(state, batch, rng):
    rng = jax.random.fold_in(rng, state["step"])

    def loss_fn(params):
      net = nnx.merge(model.graphdef, params)
      return module.loss(net, batch["tokens"], batch["label"], rng=rng, train=True,
                         step=state["step"])

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    new = dict(state, step=state["step"] + 1, params=params, opt_state=opt_state)
    if "ema_params" in state:
      new["ema_params"] = optim.ema_update(state["ema_params"], params, ema_decay)
    metrics = dict(metrics, grad_norm=optax.tree.norm(grads))
    return new, metrics

  return step


def build(config: Any, total_steps: int):
  """(ModelDef, optimizer, init_fn, step_fn) of a generator config."""
  gcfg = model_config(config)
  module = generator_module(gcfg.name)
  model = state_lib.model_def(lambda rngs: module.make_model(gcfg, rngs=rngs))
  tx = optim.optimizer_from_config(config.optim, total_steps)
  ema_decay = float(config.get("ema_decay", 0.0))
  init_fn = state_lib.make_init_fn(model, tx, ema=ema_decay > 0)
  step_fn = make_train_step(gcfg.name, model, tx, ema_decay=ema_decay)
  return model, tx, init_fn, step_fn


def model_config(config: Any) -> Any:
  """config.model of a generator config; a config in the old dialect (`config.generator`,
  top-level `batch_size`, `checkpoint_every`) is refused with the new names."""
  old = [k for k in ("generator", "batch_size", "checkpoint_every") if k in config]
  if old:
    raise ValueError(f"generator config uses the retired field(s) {old}: the network is now "
                     f"config.model, the batch config.data.batch_size, the cadence config.ckpt_every "
                     f"(one dialect with the tokenizer configs)")
  if config.get("model") is None:
    raise ValueError("a generator config needs config.model (with model.name one of "
                     f"{sorted(GENERATORS)})")
  return config.model


def check_batch(batch: dict, num_classes: int, gcfg: Any) -> None:
  """Host-side range checks (an embedding lookup out of range would silently give NaN on device)."""
  labels = None if isinstance(batch["label"], dict) else np.asarray(batch["label"])  # dict: text
  if labels is not None and num_classes > 0 and labels.max(initial=-1) >= num_classes:
    raise ValueError(f"data labels must be < model.num_classes={num_classes}, got {labels.max()}")
  tokens = np.asarray(batch["tokens"])
  k = gcfg.get("codebook_size", None)
  if k is not None and (tokens.min() < 0 or tokens.max() >= k):
    raise ValueError(f"data tokens must lie in [0, codebook_size={k}), got [{tokens.min()}, {tokens.max()}]")
  want = gcfg.get("seq_len", None)
  if want is not None and tokens.shape[1] != want:
    raise ValueError(f"data tokens have {tokens.shape[1]} positions, model.seq_len is {want}")


def text_labels(module: Any, path: str) -> Callable[[dict], dict] | None:
  """For a text-conditioned generator module (it defines `text_condition`), a host function
  batch {"tokens", "caption" int32 [B], ...} -> {"tokens", "label": the condition dict of
  the batch's captions, with "null_<key>" [B, ...] of the empty caption}; None for the others.
  Raises ValueError naming what the dataset `path` lacks."""
  condition = getattr(module, "text_condition", None)
  if condition is None:
    return None
  table = token_data.read_captions(path)
  name = module.__name__.rsplit(".", 1)[-1]
  if table is None:
    raise ValueError(f"generator {name!r} is text-conditioned: --data must hold captions "
                     f"({token_data.CAPTIONS_FILE}, written by tools/pretokenize.py on a text-aware "
                     f"tokenizer's run, e.g. TA-TiTok), {path!r} has none")
  feats = table["features"]
  if not feats:
    raise ValueError(f"generator {name!r} conditions on the captions' text-encoder features, but "
                     f"{path!r} holds captions without features (its tokenizer's text inputs are "
                     f"not a text encoder's, e.g. TexTok's word ids)")
  null = {k: np.asarray(v) for k, v in condition({k: v[-1:] for k, v in feats.items()}).items()}

  def fn(batch: dict) -> dict:
    rows = np.asarray(batch["caption"])
    labels = {k: np.asarray(v) for k, v in condition({k: v[rows] for k, v in feats.items()}).items()}
    labels.update({f"null_{k}": np.repeat(v, len(rows), axis=0) for k, v in null.items()})
    return {"tokens": batch["tokens"], "label": labels}

  return fn


def side_labels(module: Any, gcfg: Any, path: str) -> Callable[[dict], dict] | None:
  """A generator module's own `batch_labels(gcfg, path)` host function (per-example side data as
  its labels, e.g. GPSToken's initial layouts), or None when it defines none."""
  fn = getattr(module, "batch_labels", None)
  return None if fn is None else fn(gcfg, path)


def _global_batch(batch: dict, mesh, rules) -> dict:
  return jax.tree.map(lambda v: jax.make_array_from_process_local_data(
      shd.batch_sharding(mesh, np.ndim(v), rules), np.asarray(v)), batch)


def train(config: Any, workdir: str, *, progress: bool = True, stop_at: int | None = None) -> dict[str, float]:
  """Trains a generator for config.total_steps on config.data.path; resumes from workdir.

  stop_at: leave after this many steps (checkpointing there), as a preempted run would; the
  schedule still follows config.total_steps, so running again continues the same run.

  Returns the last logged metrics (floats).
  """
  os.makedirs(workdir, exist_ok=True)
  with ckpt_lib.WorkdirLock(workdir), contextlib.ExitStack() as cleanup:
    return _train_locked(config, workdir, progress=progress, stop_at=stop_at, cleanup=cleanup)


def _train_locked(config: Any, workdir: str, *, progress: bool, stop_at: int | None,
                  cleanup: contextlib.ExitStack) -> dict[str, float]:
  total = int(config.total_steps)
  mesh = state_lib.mesh_from_config(config)
  rules = state_lib.rules_from_config(config)
  model, _, init_fn, step_fn = build(config, total)
  to_text = text_labels(generator_module(config.model.name), config.data.path)
  to_text = to_text or side_labels(generator_module(config.model.name), config.model, config.data.path)
  base_rng = jax.random.key(int(config.seed))
  per_process = int(config.data.batch_size) // jax.process_count()
  it = token_data.token_iterator(config.data.path, batch_size=per_process, seed=int(config.seed),
                                 shard_index=jax.process_index(), shard_count=jax.process_count())
  ckpt = ckpt_lib.Checkpointer(f"{workdir}/checkpoints", keep=int(config.get("keep_checkpoints", 3)))
  cleanup.callback(ckpt.close)
  abstract, shardings = state_lib.abstract_train_state(init_fn, base_rng, mesh, rules)
  config_json = ckpt_lib.config_to_json(config)
  restored = ckpt.restore(abstract, config=config_json)
  with jax.set_mesh(mesh):
    if restored is None:
      state = jax.jit(init_fn, out_shardings=shardings)(base_rng)
    else:
      state, data_state, step = restored
      it.set_state(data_state)
      log.info("resumed from step %d", step)
    jstep = jax.jit(step_fn, out_shardings=(shardings, None), donate_argnums=(0,))
    start = int(state["step"])
    metrics: dict[str, float] = {}
    bar = None
    if progress and jax.process_index() == 0:
      from tqdm import tqdm
      bar = tqdm(total=total, initial=start, desc=f"train {config.model.name}")
    t0 = time.perf_counter()
    num_classes = int(config.model.get("num_classes", 0))
    end = total if stop_at is None else min(int(stop_at), total)
    for step in range(start, end):
      host_batch = next(it)
      if to_text is not None:
        host_batch = to_text(host_batch)
      check_batch(host_batch, num_classes, config.model)
      batch = _global_batch(host_batch, mesh, rules)
      state, m = jstep(state, batch, base_rng)
      if (step + 1) % int(config.get("log_every", 50)) == 0 or step + 1 == total:
        metrics = {k: float(v) for k, v in jax.device_get(m).items()}
        if not all(np.isfinite(v) for v in metrics.values()):
          raise FloatingPointError(f"non-finite generator metrics at step {step + 1}: {metrics}")
        metrics["steps_per_s"] = (step + 1 - start) / (time.perf_counter() - t0)
        if bar is not None:
          bar.set_postfix(loss=f"{metrics['loss']:.4f}")
      if (step + 1) % int(config.ckpt_every) == 0 or step + 1 == end:
        ckpt_lib.save_finite(ckpt, step + 1, state, data_state=it.get_state(), config=config_json,
                             metrics=m)
      if bar is not None:
        bar.update(1)
    if bar is not None:
      bar.close()
  ckpt.close()
  return metrics


def load_params(config: Any, workdir: str, *, use_ema: bool = True):
  """(graphdef, params) of the newest checkpoint in workdir (EMA parameters when present).

  Only the weights are read, into the shardings the run's mesh gives them; a checkpoint of another
  model raises `CheckpointMismatchError` naming the differing entries and config fields.
  """
  model, _, init_fn, _ = build(config, int(config.total_steps))
  abstract, _ = state_lib.abstract_train_state(init_fn, jax.random.key(0),
                                               state_lib.mesh_from_config(config),
                                               state_lib.rules_from_config(config))
  target = abstract["params"]
  if "model_state" in abstract:
    target = nnx.merge_state(target, abstract["model_state"])
  params, _ = ckpt_lib.load_params(os.path.join(workdir, "checkpoints"), target, use_ema=use_ema,
                                   config=ckpt_lib.config_to_json(config), flag="--workdir")
  return model.graphdef, params
