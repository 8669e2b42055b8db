"""Warm start: a fresh run takes its model weights from another run's checkpoint (`config.init_from`).

TiTok's released recipe trains in two stages: stage 2 starts from the stage-1 weights
(`experiment.init_weight` in bytedance/1d-tokenizer configs/training/TiTok/stage2/*.yaml) and adds
the MaskGIT-VQGAN's codebook and decoder as `pixel_codebook` / `pixel_decoder` (keys "pixel_" + k,
its encoder excluded: utils/train_utils.py). Decoder post-training (RobusTok) starts from a trained
tokenizer the same way. The config section:

  config.init_from.path           a training workdir, checkpoint directory, step directory or parameter
                                  directory (anything `checkpoint.load_params` reads); "" = off
  config.init_from.step           -1: the newest step; else that step of a training checkpoint
  config.init_from.use_ema        take the source's EMA weights when it kept them (the evaluation
                                  weights; the release's stage-1 files are its EMA model)
  config.init_from.pixel_decoder  optional: the MaskGIT-VQGAN weights (built from `config.teacher.model`)
                                  whose `decoder` and `codebook` replace `pixel_decoder` and
                                  `pixel_codebook`

Every read goes through the one weights reader, `checkpoint.load_params`: read-only (the source is
never created, moved, modified or deleted) and strict (a key, shape or dtype that differs from this
run's model raises `CheckpointMismatchError` naming it). Only a fresh run warm-starts: a run that has
checkpoints of its own resumes from them and ignores `init_from` (the loop restores first).
The optimizer state stays freshly initialised (Adam's moments are zeros whatever the weights), the
EMA starts at the loaded weights (the release builds its EMA model after loading).
"""
from __future__ import annotations

import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtok.train import checkpoint as ckpt_lib
from jaxtok.train import state as state_lib

log = logging.getLogger(__name__)

FIELDS = ("path", "step", "use_ema", "pixel_decoder")


def settings(section: Any) -> dict | None:
  """The validated `config.init_from` section as a dict, or None when warm start is off.

  Raises:
    TypeError / ValueError naming the field, what was expected and what was given.
  """
  if section is None:
    return None
  if isinstance(section, str):  # a bare path is accepted: config.init_from = "path/to/run"
    section = {"path": section}
  if not hasattr(section, "items"):
    raise TypeError(f"config.init_from must be a dict of {FIELDS} (or a path string), got "
                    f"{type(section).__name__}")
  cfg = dict(section.items())
  unknown = sorted(set(cfg) - set(FIELDS))
  if unknown:
    raise ValueError(f"config.init_from has unknown fields {unknown}; expected some of {FIELDS}")
  path = cfg.get("path") or ""
  if not isinstance(path, str):
    raise TypeError(f"config.init_from.path must be a string path, got {type(path).__name__}")
  if not path:
    if cfg.get("pixel_decoder"):
      raise ValueError("config.init_from.pixel_decoder needs config.init_from.path (the stage-1 "
                       f"run), got path {path!r}")
    return None
  step = cfg.get("step", -1)
  step = -1 if step is None else step
  if not isinstance(step, int) or isinstance(step, bool) or step < -1:
    raise ValueError(f"config.init_from.step must be -1 (newest) or a step >= 0, got {step!r}")
  use_ema = cfg.get("use_ema", True)
  if not isinstance(use_ema, bool):
    raise TypeError(f"config.init_from.use_ema must be a bool, got {use_ema!r}")
  pixel = cfg.get("pixel_decoder") or ""
  if not isinstance(pixel, str):
    raise TypeError(f"config.init_from.pixel_decoder must be a string path, got {type(pixel).__name__}")
  return {"path": path, "step": step, "use_ema": use_ema, "pixel_decoder": pixel}


def source_path(path: str, step: int) -> str:
  """The path `load_params` reads: `path` itself, or for step >= 0 that step's directory.

  Raises:
    FileNotFoundError: naming the step and the steps that exist.
  """
  if step < 0:
    return path
  where = ckpt_lib.resolve(path, flag="config.init_from.path")
  if where["kind"] != "train":
    raise ValueError(f"config.init_from.step={step} needs a training checkpoint, but "
                     f"{path!r} is a parameter directory")
  root = os.path.dirname(where["step_dir"])
  step_dir = os.path.join(root, str(step))
  if not os.path.isdir(os.path.join(step_dir, "state")):
    raise FileNotFoundError(f"config.init_from.step={step}: no such step in {root!r}; it holds "
                            f"steps {ckpt_lib._step_dirs(root)}")  # pylint: disable=protected-access
  return step_dir


def graft_pixel_decoder(params: nnx.State, vqgan: nnx.State) -> nnx.State:
  """TiTok `params` with `pixel_decoder` <- vqgan `decoder` and `pixel_codebook` <- vqgan `codebook`
  (the release's "pixel_" + k, encoder excluded). Shapes must agree (ValueError naming the key)."""
  if "pixel_decoder" not in params or "pixel_codebook" not in params:
    raise ValueError("config.init_from.pixel_decoder needs a TiTok with decoder_head='proxy_codes' "
                     f"(pixel_decoder, pixel_codebook); this model has {sorted(params)}")
  want = ckpt_lib.tree_signature({"pixel_decoder": params["pixel_decoder"],
                                  "pixel_codebook": params["pixel_codebook"]})
  got = ckpt_lib.tree_signature({"pixel_decoder": vqgan["decoder"], "pixel_codebook": vqgan["codebook"]})
  problems = ckpt_lib.signature_differences(got, want)
  if problems:
    raise ckpt_lib.CheckpointMismatchError(
        "config.init_from.pixel_decoder: the VQGAN's decoder/codebook do not fit this TiTok's "
        "pixel_decoder/pixel_codebook (pixel_* model fields vs config.teacher.model):\n  "
        + "\n  ".join(problems))
  out = nnx.State(dict(params.items()))
  out["pixel_decoder"] = vqgan["decoder"]
  out["pixel_codebook"] = vqgan["codebook"]
  return out


def load(config: Any, abstract_state: dict) -> tuple[nnx.State, dict] | None:
  """Reads the warm-start weights for the abstract TrainState `abstract_state` (leaves carry the
  target shardings): (model state = params + non-param variables, info), or None when off."""
  cfg = settings(config.get("init_from"))
  if cfg is None:
    return None
  target = abstract_state["params"]
  if "model_state" in abstract_state:
    target = nnx.merge_state(target, abstract_state["model_state"])
  full, info = ckpt_lib.load_params(source_path(cfg["path"], cfg["step"]), target,
                                    use_ema=cfg["use_ema"], config=config,
                                    flag="config.init_from.path")
  if cfg["pixel_decoder"]:
    from jaxtok.tokenizers import api as tok_api  # pylint: disable=g-import-not-at-top
    teacher = config.get("teacher")
    if teacher is None or teacher.get("model") is None:
      raise ValueError("config.init_from.pixel_decoder needs config.teacher.model (the VQGAN's "
                       "architecture), got none")
    vqgan = tok_api.build(teacher.model)
    replicated = jax.sharding.NamedSharding(
        jax.tree.leaves(target)[0].sharding.mesh, jax.sharding.PartitionSpec())
    vq_params, _ = ckpt_lib.load_params(cfg["pixel_decoder"], vqgan.abstract_params(),
                                        flag="config.init_from.pixel_decoder", sharding=replicated)
    full = graft_pixel_decoder(full, vq_params)
    info["pixel_decoder"] = cfg["pixel_decoder"]
  return full, info


def apply(state: dict, full: nnx.State, shardings: dict) -> dict:
  """`state` with params / model_state (and a fresh EMA) taken from `full`, in `shardings`."""
  params, rest = state_lib.split_params(full)
  new = dict(state)
  new["params"] = jax.device_put(params, shardings["params"])
  if "model_state" in state:
    new["model_state"] = jax.device_put(rest, shardings["model_state"])
  if "ema_params" in state:  # its own buffers: the step donates params and ema_params separately
    new["ema_params"] = jax.jit(lambda t: jax.tree.map(jnp.copy, t),
                                out_shardings=shardings["ema_params"])(new["params"])
  return new
