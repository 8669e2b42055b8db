"""Test configuration: 8 fake CPU devices so that sharding is exercised everywhere.

The flags must be set before JAX initialises its backends, so this runs at import time.
"""
import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_threefry_partitionable", True)
# A persistent XLA compilation cache outside the clone: the suite compiles many identical tiny
# programs (in both xdist workers and across runs); executables taking >= 0.5 s to compile are
# stored and reused. The key covers the program, the XLA flags and the jax/jaxlib versions.
# JAXTOK_TEST_CACHE="" turns it off.
_cache = os.environ.get("JAXTOK_TEST_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "jaxtok",
                                                              "jax-tests"))
if _cache:
  jax.config.update("jax_compilation_cache_dir", _cache)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

assert jax.device_count() == 8, f"expected 8 fake CPU devices, got {jax.device_count()}"
