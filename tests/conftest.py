"""Test configuration: 8 fake CPU devices so that sharding is exercised everywhere.

The flags must be set before JAX initialises its backends, so this runs at import time.
"""
import os

# --xla_backend_optimization_level=0: the suite's programs are tiny, so LLVM's optimisation passes
# cost far more compile time than they save run time (measured: -21% wall on the generator-training
# tests, cold cache). The HLO is the same at every level and fast-math is off, so results agree up to
# the rounding of fused multiply-adds; the suite passes at both levels. JAXTOK_TEST_XLA_OPT=1
# compiles at XLA's default level instead.
_opt = os.environ.get("JAXTOK_TEST_XLA_OPT", "0")
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    + ("" if _opt == "1" else " --xla_backend_optimization_level=0")
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_threefry_partitionable", True)
# A persistent XLA compilation cache outside the clone: the suite compiles many identical tiny
# programs (in both xdist workers, in the tools' subprocesses, and across runs); executables taking
# >= 0.5 s to compile are stored and reused. The key covers the program, the XLA flags and the
# jax/jaxlib versions. It is set through the environment so that the tool subprocesses the tests
# start (train, resume, pretokenize, sample: the same tiny programs again) share it too.
# JAXTOK_TEST_CACHE="" turns it off.
_cache = os.environ.get("JAXTOK_TEST_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "jaxtok",
                                                              "jax-tests"))
if _cache:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"
  jax.config.update("jax_compilation_cache_dir", _cache)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

assert jax.device_count() == 8, f"expected 8 fake CPU devices, got {jax.device_count()}"
