"""Official PyTorch checkpoints -> jaxtok parameters, and converted checkpoints on disk.

  convert(model, weights, config=None) -> (jaxtok config dict, nnx.State)
  save_converted(out_dir, config, params)   writes out_dir/params (orbax) and out_dir/config.json
  load_converted(out_dir) -> (config, params)
  load_converted_generator(out_dir) -> (config, graphdef, params)   a generator, for
                                            jaxtok.eval.generate.make_sampler(config["name"], ...)

`model` (the kind of official checkpoint):
  "titok"     TiTok two-stage (S/B/L) and single-stage VQ / VAE      convert/titok.py
  "onedpiece" One-D-Piece (TiTok layout; config name "onedpiece")  convert/titok.py
  "vqgan"     the MaskGIT VQGAN                                      convert/vqgan.py
  "maskgit"   TiTok's MaskGIT generators (ImageBert, UViTBert)       convert/maskgit.py
  "rar"       RAR generators (rar_b / rar_l / rar_xl / rar_xxl)      convert/rar.py
  "flextok"   FlexTok                                                convert/flextok.py
  "dinov2"    DINOv2 (a frozen feature network, `nn.dinov2`)         convert/dinov2.py
  "tatitok"   TA-TiTok (text-aware TiTok, VQ / VAE)                  convert/tatitok.py
  "clip_text" CLIP text tower (frozen, `nn.clip_text`)               convert/clip_text.py
  "maskgen"   MaskGen-VQ text-to-image generators (L / XL)           convert/maskgen.py
  "maskgen_kl" MaskGen-KL text-to-image generators (L / XL)          convert/maskgen_kl.py
  "siglip"    SigLIP vision tower (HF layout, `nn.siglip`)           convert/siglip.py
  "t5"        T5 encoder (HF layout, `nn.t5`)                        convert/t5.py
  "gpstoken"  GPSToken (S64 / M128 / L256)                           convert/gpstoken.py
  "gpstoken_gen" GPSToken's generator (SiT-XL/2-gs)                  convert/gpstoken_gen.py
  "instella"  Instella-T2I's binary autoencoder                      convert/instella.py
  "olmo"      OLMo v1 text tower (HF checkpoint directory, `nn.olmo`) convert/olmo.py
  "instella_diff" / "instella_ar" Instella-T2I's text-to-image generators  convert/instella_t2i.py
  "ldm_vae"   Stable Diffusion's VAE (AutoencoderKL; diffusers or ldm) convert/ldm_vae.py
`config`: for FlexTok, None (the hydra config in the file), a name of flextok.RELEASED, or a
mapping of overrides; for the others, a released model name (e.g. "tokenizer_titok_l32_imagenet"), a jaxtok config (mapping,
JSON string or file), an official config (with a "model" key, e.g. the HF config.json), or None to
read what the tensor shapes show. Every converter raises ValueError naming the missing, unexpected
and mis-shaped tensors of a wrong or incomplete file.

A saved tokenizer loads back with `jaxtok.train.checkpoint.load_params(out_dir,
jaxtok.tokenizers.api.build(config).abstract_params())` or simply `load_converted(out_dir)`.
"""
from __future__ import annotations

import importlib
import json
import os
from typing import Any

MODELS = ("titok", "onedpiece", "vqgan", "maskgit", "rar", "flextok", "dinov2", "tatitok", "clip_text",
          "maskgen", "siglip", "t5", "maskgen_kl", "gpstoken", "gpstoken_gen", "instella", "olmo",
          "instella_diff", "instella_ar", "ldm_vae")
# Frozen feature towers: `jaxtok.convert.<name>.load(weights, overrides) -> (config, params)` and
# `jaxtok.nn.<name>.abstract_params(config)`.
FROZEN_TOWERS = ("clip_text", "siglip", "t5", "dinov2", "olmo")
# Converters called as `.load(weights, config) -> (config, params)`: model -> module, the converter
# being jaxtok.convert.<module>, or its CONVERTERS[model] when it holds one per network (instella_t2i).
_PLAIN = {name: name for name in ("vqgan", "gpstoken", "instella", "maskgit", "gpstoken_gen", "rar",
                                  "maskgen", "maskgen_kl", "tatitok", "ldm_vae")}
_PLAIN.update(instella_diff="instella_t2i", instella_ar="instella_t2i")


def _converter(name: str, module: str):
  """jaxtok.convert.<module>, or its CONVERTERS[name] when it defines one for `name`."""
  mod = importlib.import_module(f"jaxtok.convert.{module}")
  return getattr(mod, "CONVERTERS", {}).get(name, mod)


def convert(model: str, weights: str | os.PathLike, config: Any = None):
  """(jaxtok config, nnx.State) of the official checkpoint file `weights` (see the module doc)."""
  if model in ("titok", "onedpiece"):
    from jaxtok.convert import titok
    cfg, params = titok.load(weights, config)
    if model == "onedpiece":  # the same layout; the name switches on tail drop for training
      if cfg.get("decoder_head") != "proxy_codes":
        raise ValueError("One-D-Piece checkpoints have the legacy TiTok layout (proxy-code head); "
                         f"this config has decoder_head {cfg.get('decoder_head')!r}")
      cfg = dict(cfg, name="onedpiece")
    return cfg, params
  if model in _PLAIN:
    return _converter(model, _PLAIN[model]).load(weights, config)
  if model == "flextok":
    from jaxtok.convert import flextok
    if config is None or isinstance(config, str):  # None, or a name of flextok.RELEASED
      cfg, _, params = flextok.load(weights, name=config)
    else:  # a mapping of overrides (flextok.jaxtok_config's keywords)
      cfg, _, params = flextok.load(weights, **dict(config))
    return cfg, params
  if model in FROZEN_TOWERS:  # config: None (the shapes) or overrides (mapping, JSON string or file)
    from jaxtok.convert import common
    overrides = None if config is None else {
        k: v for k, v in common.config_arg(config).items() if k != "name"}
    cfg, params = importlib.import_module(f"jaxtok.convert.{model}").load(weights, overrides)
    return dict(cfg, name=model), params
  raise ValueError(f"model must be one of {MODELS}, got {model!r}")


def resolve_config(config: Any, flat, *, released, aliases, infer, from_official) -> dict:
  """Shared by the converters: None -> infer(flat); a released name (or its alias) -> its config;
  JSON file / string or mapping -> that config, an official one (with a "model" key and no "name")
  translated by from_official."""
  from jaxtok.convert import common
  if config is None:
    if flat is None:
      raise ValueError("a config is needed (none given and no state dict to infer it from)")
    return infer(flat)
  if isinstance(config, str) and config in aliases:
    config = aliases[config]
  config = common.config_arg(config, released)
  if "model" in config and "name" not in config:
    return from_official(config)
  return config


# Config names of converted generators -> their converter module in jaxtok.convert.
_GENERATOR_MODULES = {"maskgit_official": "maskgit", "rar": "rar", "maskgen": "maskgen",
                      "maskgen_kl": "maskgen_kl", "gpstoken_gen": "gpstoken_gen",
                      "instella_diff": "instella_t2i", "instella_ar": "instella_t2i"}
GENERATORS = tuple(_GENERATOR_MODULES)


def _generator_converter(config: dict):
  """The converter module of a generator config (None for a tokenizer config)."""
  name = config.get("name")
  return None if name not in _GENERATOR_MODULES else _converter(name, _GENERATOR_MODULES[name])


def _abstract(config: dict):
  if config.get("name") == "ldm_vae":
    from jaxtok.convert import ldm_vae
    return ldm_vae.abstract_params(config)
  if config.get("name") in FROZEN_TOWERS:
    return importlib.import_module(f"jaxtok.nn.{config['name']}").abstract_params(config)
  converter = _generator_converter(config)
  if converter is not None:
    return converter.abstract_params(config)
  from jaxtok.tokenizers import api
  return api.build(config).abstract_params()


def save_converted(out_dir: str | os.PathLike, config: dict, params) -> str:
  """Writes out_dir/params (an orbax StandardCheckpointer checkpoint of the nnx.State) and
  out_dir/config.json; returns out_dir. Refuses to overwrite existing params."""
  from jaxtok.train import checkpoint as ckpt_lib
  out_dir = os.path.abspath(os.fspath(out_dir))
  if os.path.exists(os.path.join(out_dir, "params")):
    raise ValueError(f"{out_dir}/params already exists; choose an empty output directory")
  os.makedirs(out_dir, exist_ok=True)
  ckpt_lib.save_params(os.path.join(out_dir, "params"), params)
  with open(os.path.join(out_dir, "config.json"), "w") as f:
    json.dump(config, f, indent=2, sort_keys=True, default=list)
  return out_dir


def load_converted(out_dir: str | os.PathLike):
  """(config, nnx.State) written by `save_converted` (tokenizer or generator)."""
  from jaxtok.train import checkpoint as ckpt_lib
  out_dir = os.path.abspath(os.fspath(out_dir))
  path = os.path.join(out_dir, "config.json")
  if not os.path.isfile(path):
    raise ValueError(f"{out_dir} holds no config.json (not written by save_converted)")
  with open(path) as f:
    config = json.load(f)
  params, _ = ckpt_lib.load_params(os.path.join(out_dir, "params"), _abstract(config),
                                   flag=out_dir)
  return config, params


def load_converted_generator(out_dir: str | os.PathLike):
  """(config, graphdef, params) of a generator written by `save_converted` (a converted TiTok MaskGIT
  generator or RAR), ready for `jaxtok.eval.generate.make_sampler(config["name"], graphdef, params,
  options)`. A tokenizer's directory is refused."""
  config, params = load_converted(out_dir)
  converter = _generator_converter(config)
  if converter is None:
    raise ValueError(f"{os.fspath(out_dir)} holds a converted {config.get('name')!r} (a tokenizer), "
                     f"not a generator (one of {GENERATORS})")
  from flax import nnx
  return config, nnx.graphdef(converter.build(config, params)), params
