r"""Trains a token generator on a pre-tokenized dataset.

  python tools/pretokenize.py --config configs/titok.py:tiny --checkpoint runs/titok --out runs/titok_tokens
  python tools/train_generator.py --config configs/maskgit_titok.py:tiny --data runs/titok_tokens \
      --workdir runs/maskgit --config.generator.codebook_size=64

Wraps `jaxtok.train.generator.train` (GPT / MaskGIT / MAR by config.generator.name; progress bar,
checkpoints in <workdir>/checkpoints, automatic resume). --data overrides config.data.path. Before
training, the dataset's meta.json is checked against the generator: codebook size, sequence length
(and token dimension for continuous tokens) must match, labels must be < num_classes for a
class-conditional generator; the error names the config field to override. The dataset's
meta.json is copied to <workdir>/data_meta.json: it names the tokenizer, so tools/sample.py can
decode the generator's samples without being told the tokenizer again.
"""
from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from absl import flags  # noqa: E402

from jaxtok.eval import cli  # noqa: E402

FLAGS = flags.FlagValues()
cli.define_config(FLAGS, "config", "generator config file[:arg]")
flags.DEFINE_string("workdir", None, "run directory (checkpoints, data_meta.json)", flag_values=FLAGS)
flags.DEFINE_string("data", None, "token dataset directory (tools/pretokenize.py); overrides "
                    "config.data.path", flag_values=FLAGS)
flags.DEFINE_integer("stop_at", None, "leave after this many steps (the schedule still follows "
                     "config.total_steps; running again continues)", flag_values=FLAGS)
flags.DEFINE_integer("cpu_devices", None, "fake CPU devices (testing)", flag_values=FLAGS)

META_FILE = "data_meta.json"


def check_data(config, meta: dict, path: str) -> None:
  """Raises ValueError naming the config field when the dataset does not fit the generator."""
  g = config.generator
  shape = list(meta.get("token_shape", []))
  continuous = str(meta.get("token_dtype", "int32")).startswith("float")
  problems = []
  if shape and g.get("seq_len") is not None and shape[0] != g.seq_len:
    problems.append(f"config.generator.seq_len is {g.seq_len}, the data have {shape[0]} tokens per "
                    f"image (--config.generator.seq_len={shape[0]})")
  if g.name == "mar":
    if not continuous:
      problems.append(f"generator 'mar' needs continuous tokens [N, K, D]; {path!r} holds discrete "
                      f"{meta.get('token_dtype')} tokens")
    elif len(shape) == 2 and shape[1] != g.token_dim:
      problems.append(f"config.generator.token_dim is {g.token_dim}, the data's tokens have {shape[1]} "
                      f"dimensions (--config.generator.token_dim={shape[1]})")
  else:
    if continuous:
      problems.append(f"generator {g.name!r} needs discrete tokens; {path!r} holds continuous tokens "
                      f"{shape} (use configs/mar_vae.py)")
    book = meta.get("codebook_size")
    if book is not None and g.get("codebook_size") != book:
      problems.append(f"config.generator.codebook_size is {g.get('codebook_size')}, the tokenizer has "
                      f"{book} codes (--config.generator.codebook_size={book})")
  classes = int(g.get("num_classes", 0))
  labels = np.load(os.path.join(path, "labels.npy"), mmap_mode="r")
  top = int(labels.max(initial=-1))
  if classes > 0 and top >= classes:
    problems.append(f"config.generator.num_classes is {classes}, the data's labels reach {top} "
                    f"(--config.generator.num_classes={top + 1})")
  if problems:
    raise ValueError(f"--data {path!r} does not fit the generator config:\n  " + "\n  ".join(problems))


def main(argv) -> dict:
  cli.parse(FLAGS, argv, __doc__)
  config = FLAGS.config
  if config is None:
    raise ValueError("--config is required: a generator config, e.g. configs/maskgit_titok.py:tiny")
  if not FLAGS.workdir:
    raise ValueError("--workdir is required: the run directory")
  if FLAGS.data:
    config.data.path = FLAGS.data
  path = config.data.get("path", "")
  if not path:
    raise ValueError("--data is required (or config.data.path): a token dataset written by "
                     "tools/pretokenize.py, got none")
  from jaxtok.data import tokens as token_data  # pylint: disable=g-import-not-at-top
  try:
    meta = token_data.read_meta(path)
  except FileNotFoundError as err:
    raise FileNotFoundError(f"--data: {err}") from None
  check_data(config, meta, path)
  from jaxtok.train import distributed  # pylint: disable=g-import-not-at-top
  distributed.setup(coordinator=None, num_processes=None, process_id=None,
                    cpu_devices=FLAGS.cpu_devices)
  from jaxtok.train import generator  # pylint: disable=g-import-not-at-top
  os.makedirs(FLAGS.workdir, exist_ok=True)
  with open(os.path.join(FLAGS.workdir, META_FILE), "w") as f:
    json.dump(dict(meta, path=os.path.abspath(path)), f, indent=2)
  metrics = generator.train(config, FLAGS.workdir, progress=True, stop_at=FLAGS.stop_at)
  if metrics:
    print("final " + " ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())), flush=True)
  return metrics


if __name__ == "__main__":
  main(sys.argv)
