"""Trains a tokenizer: `python tools/train.py --config configs/onedpiece.py:main --workdir /tmp/run`.

Resumes automatically from the newest intact checkpoint in the workdir. Config fields can be
overridden (`--config.total_steps=100`). Multi-process (one process per host, or several on one CPU
machine with gloo): `--coordinator 127.0.0.1:1234 --num_processes 2 --process_id 0`.

Text-aware tokenizers (configs/tatitok.py, configs/textok.py) train on the bundled photographs'
captions: their config's `text` section turns each crop's caption into the model's text inputs
(`jaxtok.data.photo_captions`), and the held-out crops are scored with their captions.
"""
from __future__ import annotations

import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "config file[:arg]", lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", None, "run directory (checkpoints, summaries, images)")
_COORD = flags.DEFINE_string("coordinator", None, "host:port of process 0 (multi-process runs)")
_NPROC = flags.DEFINE_integer("num_processes", None, "number of processes (multi-process runs)")
_PID = flags.DEFINE_integer("process_id", None, "this process's index (multi-process runs)")
_CPU_DEVICES = flags.DEFINE_integer("cpu_devices", None, "fake CPU devices per process (testing)")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  # orbax logs every checkpoint phase at INFO through absl; keep its warnings and errors only.
  logging.getLogger("absl").setLevel(logging.WARNING)
  from jaxtok.train import distributed  # pylint: disable=g-import-not-at-top
  distributed.setup(coordinator=_COORD.value, num_processes=_NPROC.value, process_id=_PID.value,
                    cpu_devices=_CPU_DEVICES.value)
  from jaxtok.train import loop  # pylint: disable=g-import-not-at-top
  report = loop.train(_CONFIG.value, _WORKDIR.value)
  per = report.get("per_token_count")
  if per:
    for k, m in per.items():
      print(f"tokens={k}: PSNR {m['psnr']:.2f} dB  SSIM {m['ssim']:.4f}", flush=True)


if __name__ == "__main__":
  from jaxtok.eval import cli  # noqa: E402  pylint: disable=g-import-not-at-top
  cli.check_config_files(sys.argv, ["config"])
  app.run(main)
