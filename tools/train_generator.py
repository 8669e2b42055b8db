r"""Trains a token generator on a pre-tokenized dataset.

  python tools/pretokenize.py --config configs/titok.py:tiny --checkpoint runs/titok --out runs/titok_tokens
  python tools/train_generator.py --config configs/maskgit_titok.py:tiny --data runs/titok_tokens \
      --workdir runs/maskgit --config.model.codebook_size=64

Wraps `jaxtok.train.generator.train` (GPT / MaskGIT / MAR by config.model.name; progress bar,
checkpoints in <workdir>/checkpoints, automatic resume). --data overrides config.data.path. Before
training, the dataset's meta.json is checked against the generator: codebook size, sequence length
(and token dimension for continuous tokens) must match, labels must be < num_classes for a
class-conditional generator; the error names the config field to override. The dataset's
meta.json is copied to <workdir>/data_meta.json: it names the tokenizer, so tools/sample.py can
decode the generator's samples without being told the tokenizer again.

A text-conditioned generator (its module defines `text_condition`: MaskGen) reads the captions a
text-aware tokenizer's dataset holds (tools/pretokenize.py on a TA-TiTok run): its labels are the
condition dict of each example's caption (`jaxtok.train.generator.text_labels`); a dataset without
captions is refused. Class-conditional generators read labels.npy as before (on a captioned photo
dataset: the photo index).

  python tools/train_generator.py --config configs/maskgen.py:tiny --data runs/tatitok_tokens \
      --workdir runs/maskgen
"""
from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

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
  from jaxtok.train import generator  # pylint: disable=g-import-not-at-top
  generator.model_config(config)  # refuses the retired dialect before anything else
  token_data.check_data(config, meta, path)
  from jaxtok.train import distributed  # pylint: disable=g-import-not-at-top
  distributed.setup(coordinator=None, num_processes=None, process_id=None,
                    cpu_devices=FLAGS.cpu_devices)
  os.makedirs(FLAGS.workdir, exist_ok=True)
  with open(os.path.join(FLAGS.workdir, META_FILE), "w") as f:
    json.dump(dict(meta, path=os.path.abspath(path)), f, indent=2)
  metrics = generator.train(config, FLAGS.workdir, progress=True, stop_at=FLAGS.stop_at)
  if metrics:
    print("final " + " ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())), flush=True)
  return metrics


if __name__ == "__main__":
  main(sys.argv)
