"""A run killed with SIGKILL after a checkpoint and resumed ends bitwise equal to an uninterrupted run.

Both runs are `tools/train.py` subprocesses on `configs/onedpiece.py:tiny`; the interrupted one
sleeps between steps (config.step_delay_s) so that it is still mid-training when killed. The
reference reads its batches plainly (data.device_prefetch=0), the interrupted run 3 batches ahead:
equality also shows that device prefetch neither changes the batches nor loses or repeats
prefetched ones across the resume.
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 8


def _cmd(workdir, *extra):
  return [sys.executable, os.path.join(ROOT, "tools", "train.py"),
          "--config", os.path.join(ROOT, "configs", "onedpiece.py") + ":tiny", "--workdir", workdir,
          f"--config.total_steps={STEPS}", "--config.ckpt_every=2", "--config.eval_every=100",
          "--config.final_eval=False", *extra]


def _env():
  env = dict(os.environ)
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
  env["JAX_PLATFORMS"] = "cpu"
  return env


@pytest.mark.slow
def test_sigkill_resume_is_bitwise_identical(tmp_path):
  full, killed = str(tmp_path / "full"), str(tmp_path / "killed")
  ref = subprocess.Popen(_cmd(full, "--config.data.device_prefetch=0"), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  victim = subprocess.Popen(_cmd(killed, "--config.step_delay_s=1.0",
                                 "--config.data.device_prefetch=3"), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  ckpt4 = os.path.join(killed, "checkpoints", "4")
  deadline = time.time() + 400
  while not os.path.isdir(ckpt4) and time.time() < deadline and victim.poll() is None:
    time.sleep(0.2)
  assert os.path.isdir(ckpt4), "the interrupted run never wrote its step-4 checkpoint"
  assert victim.poll() is None, "the run finished before it could be killed"
  victim.send_signal(signal.SIGKILL)
  victim.wait()
  assert not os.path.exists(os.path.join(killed, "final.json"))
  out = subprocess.run(_cmd(killed, "--config.data.device_prefetch=3"), env=_env(), capture_output=True, text=True, timeout=400)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  assert "resumed from step" in out.stderr + out.stdout
  ref_out = ref.communicate(timeout=400)[0].decode()
  assert ref.returncode == 0, ref_out[-3000:]
  a = json.load(open(os.path.join(full, "final.json")))
  b = json.load(open(os.path.join(killed, "final.json")))
  assert a["step"] == b["step"] == STEPS
  assert a["params_sha256"] == b["params_sha256"]
