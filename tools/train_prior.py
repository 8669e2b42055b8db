"""Fits the token priors of the codec (tools/compress.py) for a trained tokenizer run.

  python tools/train_prior.py --checkpoint runs/main --out runs/main_prior

Draws --num_examples fresh crops from the run's own training distribution, tokenizes them, and writes
the unigram tables, the compact vocabulary and a small causal GPT prior trained for --steps
(`jaxtok.codec.prior_training`; the GPT run resumes when the command is run again). The tokenizer
run is only read.
"""
from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from jaxtok.eval import cli  # noqa: E402

FLAGS = flags.FlagValues()
flags.DEFINE_string("checkpoint", None, "the tokenizer's training run directory", flag_values=FLAGS)
flags.DEFINE_string("out", None, "output folder for the priors", flag_values=FLAGS)
flags.DEFINE_integer("num_examples", 20000, "training crops to tokenize", flag_values=FLAGS)
flags.DEFINE_integer("steps", None, "GPT prior training steps (default: the config's)",
                     flag_values=FLAGS)
flags.DEFINE_string("config_arg", "", "extra jaxtok.configs.codec_prior arguments (e.g. tiny)",
                    flag_values=FLAGS)
flags.DEFINE_integer("seed", 1, "crop seed (the tokenizer run used its own)", flag_values=FLAGS)


def main(argv) -> dict:
  cli.parse(FLAGS, argv, __doc__)
  if not FLAGS.checkpoint or not FLAGS.out:
    raise ValueError("--checkpoint (a tokenizer run) and --out are required")
  from jaxtok.codec import prior_training  # pylint: disable=g-import-not-at-top
  result = prior_training.train(FLAGS.checkpoint, FLAGS.out, num_examples=FLAGS.num_examples,
                                steps=FLAGS.steps, config_arg=FLAGS.config_arg, seed=FLAGS.seed)
  print(json.dumps(result["meta"], indent=1), flush=True)
  return result


if __name__ == "__main__":
  main(sys.argv)
