"""Two processes on one machine (gloo CPU collectives) train the tiny config together.

Each process has one CPU device and feeds its half of the global batch; both must end with the same
parameters (bitwise: they hold replicas of the same all-reduced update), and those must match a
single process with two devices and the same global batch (up to the reduction order).
"""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _cmd(workdir, *extra):
  return [sys.executable, os.path.join(ROOT, "tools", "train.py"),
          "--config", os.path.join(ROOT, "configs", "onedpiece.py") + ":tiny", "--workdir", workdir,
          "--config.total_steps=3", "--config.ckpt_every=3", "--config.eval_every=100",
          "--config.final_eval=False", "--config.data.batch_size=4", *extra]


def _env(devices):
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["JAX_PLATFORMS"] = "cpu"
  return env


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_agree_with_single_process(tmp_path):
  port = _free_port()
  multi = str(tmp_path / "multi")
  procs = [subprocess.Popen(_cmd(multi, f"--coordinator=127.0.0.1:{port}", "--num_processes=2",
                                 f"--process_id={i}"), env=_env(1), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for i in range(2)]
  single = subprocess.Popen(_cmd(str(tmp_path / "single")), env=_env(2), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
  outs = [p.communicate(timeout=500)[0] for p in procs]
  single_out = single.communicate(timeout=500)[0]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-4000:]
  assert single.returncode == 0, single_out[-4000:]
  finals = [[l for l in out.splitlines() if l.startswith("FINAL ")] for out in outs]
  assert finals[0] and finals[0] == finals[1], finals  # identical checksum printed by both
  a = json.load(open(os.path.join(multi, "final.json")))
  b = json.load(open(os.path.join(tmp_path / "single", "final.json")))
  assert a["step"] == b["step"] == 3
  assert a["params_sha256"] in finals[0][0]
  np.testing.assert_allclose(a["params_sums"], b["params_sums"], rtol=1e-4, atol=1e-4)
