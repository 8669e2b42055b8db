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

assert jax.device_count() == 8, f"expected 8 fake CPU devices, got {jax.device_count()}"
