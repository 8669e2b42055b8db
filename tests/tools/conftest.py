"""Shared fixtures of the tool tests: the tools imported by path, a tiny TiTok checkpoint in the
training-run layout (random init, EMA weights kept apart from the raw ones), and an image folder."""
import importlib.util
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
_TOOLS = {}


def load_tool(name):
  """tools/<name>.py as a module (under a unique module name, so no tool shadows another module)."""
  if name not in _TOOLS:
    spec = importlib.util.spec_from_file_location(f"jaxtok_tool_{name}", ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    _TOOLS[name] = module
  return _TOOLS[name]


def save_train_checkpoint(workdir, state, config, step=1):
  """Writes `state` where a training run keeps its checkpoints (workdir/checkpoints/<step>)."""
  from jaxtok.train import checkpoint as ckpt_lib
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), keep=1, async_save=False)
  ckpt.save(step, state, config=ckpt_lib.config_to_json(config))
  ckpt.close()


def random_tokenizer_run(tmp_path_factory, config, name, *, ema=False):
  """(workdir, params): a training-run directory holding random weights of the tokenizer
  `config.model` (and the same as EMA weights when ema), without a jitted init."""
  from jaxtok.tokenizers import api
  params = random_like(api.build(config.model).abstract_params(), seed=0)
  workdir = str(tmp_path_factory.mktemp(name))
  state = {"step": jnp.int32(1), "params": params}
  if ema:
    state["ema_params"] = params
  save_train_checkpoint(workdir, state, config)
  return workdir, params


def pretokenize_photos(tmp_path_factory, workdir, name, num, *flags):
  """tools/pretokenize.py of `num` bundled photo crops (batch 8) through the run at `workdir`."""
  out = str(tmp_path_factory.mktemp("data") / name)
  load_tool("pretokenize").main(["pretokenize", f"--checkpoint={workdir}", f"--out={out}",
                                 "--source=photos", f"--num_examples={num}", "--batch_size=8",
                                 *flags])
  return out


def random_like(abstract, seed=0, scale=0.1):
  """A pytree of abstract arrays filled with N(0, scale^2) values (integers: zeros), placed with
  their shardings when they carry one."""
  rng = np.random.default_rng(seed)

  def fill(a):
    if jnp.issubdtype(a.dtype, jnp.floating):
      value = (rng.normal(size=a.shape) * scale).astype(a.dtype)
    else:
      value = np.zeros(a.shape, a.dtype)
    sharding = getattr(a, "sharding", None)
    return jax.device_put(value, sharding) if sharding is not None else jnp.asarray(value)

  return jax.tree.map(fill, abstract)


@pytest.fixture(scope="session")
def tiny_titok(tmp_path_factory):
  """(workdir, config, tokenizer, ema_params, raw_params) of configs/titok.py:tiny (VQ, 64 codes, 8
  tokens, 16x16 images)."""
  from jaxtok.configs import titok
  from jaxtok.tokenizers import api
  config = titok.get_config("tiny")
  tokenizer = api.build(config.model)
  # Random values of the right shapes (jitted or eager nnx init costs ~20 s of CPU compile here).
  raw = random_like(tokenizer.abstract_params(), seed=0)
  # EMA weights differ from the raw ones, so a test can tell which were loaded.
  ema = jax.tree.map(lambda a: a * 0.9 + 0.01, raw)
  workdir = str(tmp_path_factory.mktemp("titok_run"))
  save_train_checkpoint(workdir, {"step": jnp.int32(1), "params": raw, "ema_params": ema}, config)
  return workdir, config, tokenizer, ema, raw


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory):
  """Six photo crops of different sizes and formats: 4 in class folders (a: 2, b: 2), 2 at the top."""
  from PIL import Image
  from jaxtok.data import photos
  pics = photos.bundled_photos()
  root = tmp_path_factory.mktemp("images")
  specs = [("a/x.png", 40, 30), ("a/y.jpg", 24, 50), ("b/z.png", 16, 16), ("b/w.png", 33, 20),
           ("top1.png", 20, 20), ("top2.jpeg", 64, 48)]
  for i, (name, w, h) in enumerate(specs):
    p = pics[i % len(pics)][::7, ::7][:h, :w]
    os.makedirs(root / os.path.dirname(name), exist_ok=True)
    Image.fromarray(np.ascontiguousarray(p)).save(root / name)
  return str(root)


@pytest.fixture(scope="session")
def token_dir(tiny_titok, tmp_path_factory):
  """A token dataset (tools/pretokenize.py) of 20 bundled photos through the tiny TiTok: int32 [20, 8]
  tokens in [0, 64), one class label per photo."""
  workdir = tiny_titok[0]
  out = str(tmp_path_factory.mktemp("data") / "titok_tokens")
  load_tool("pretokenize").main(["pretokenize", f"--checkpoint={workdir}", f"--out={out}",
                                 "--source=photos", "--num_examples=20", "--batch_size=8"])
  return out
