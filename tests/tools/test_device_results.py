"""benchmarks/device/to_results.py: the device run's log becomes per-step markdown tables."""
import importlib.util
import pathlib

LOG = """[run] start 2026-11-30T00:00:00Z dry=0 budget=540s root=/r
GPU 0: NVIDIA H200 (UUID: GPU-x)
[env] python 3.12.3 jax 0.11.2 devices [CudaDevice(id=0)] cores 16
[step] tok_a start +10s limit 75s: python tools/benchmark.py --suite tokenizers --models a
[stage] +3.0s a: building
[row] a encode, batch 64 | jaxtok | 12.500 ms | 5120 images/s; 1.0M params
[row] a decode, batch 64 | jaxtok | nan ms | failed: XlaRuntimeError: RESOURCE_EXHAUSTED
[step] tok_a end ok +40s
[step] train_b start +40s limit 150s: python tools/benchmark.py --suite train --models b
[stage] +90.0s train b: state initialised; compiling the step
[step] train_b end TIMEOUT after 150s +195s
[step] quantizers skipped: 10s left +530s
"""


def test_log_to_tables(tmp_path):
  path = pathlib.Path(__file__).parents[2] / "benchmarks" / "device" / "to_results.py"
  spec = importlib.util.spec_from_file_location("to_results", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  header, steps = mod.parse(LOG.splitlines(keepends=True))
  assert [s["name"] for s in steps] == ["tok_a", "train_b", "quantizers"]
  assert steps[0]["rows"][0] == ("a encode, batch 64", "jaxtok", "12.500", "5120 images/s; 1.0M params")
  md = mod.render(header, steps, "H200")
  assert "GPU 0: NVIDIA H200" in md and "**tok_a** — ok, 30 s (limit 75 s)" in md
  assert "| a decode, batch 64 | jaxtok | nan | failed: XlaRuntimeError: RESOURCE_EXHAUSTED |" in md
  assert "TIMEOUT after 150s; last progress: +90.0s train b: state initialised; compiling the step" in md
  assert "**quantizers** — skipped (10s left +530s)" in md
