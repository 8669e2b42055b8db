"""Multi-process setup: `jax.distributed.initialize` behind explicit arguments, gloo on CPU.

One process per host (or several on one machine for testing). Each process feeds only its own
slice of the global batch (`jax.make_array_from_process_local_data`); collectives run over gloo when
the platform is CPU. Call `setup` before anything touches a JAX backend.
"""
from __future__ import annotations

import os

import jax


def setup(*, coordinator: str | None = None, num_processes: int | None = None,
          process_id: int | None = None, cpu_devices: int | None = None) -> None:
  """Initialises the JAX runtime for this process.

  Args:
    coordinator: "host:port" of process 0; None runs single-process.
    num_processes: total processes (required with coordinator, >= 1).
    process_id: this process's index in [0, num_processes) (required with coordinator).
    cpu_devices: fake CPU devices per process (XLA host-platform device count), for tests.

  Raises:
    ValueError: if the multi-process arguments are incomplete or out of range.
  """
  if cpu_devices is not None:
    if cpu_devices < 1:
      raise ValueError(f"cpu_devices must be >= 1, got {cpu_devices}")
    flag = f"--xla_force_host_platform_device_count={int(cpu_devices)}"
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flag).strip()
  jax.config.update("jax_threefry_partitionable", True)
  if coordinator is None:
    if num_processes not in (None, 1) or process_id not in (None, 0):
      raise ValueError(f"num_processes={num_processes} / process_id={process_id} need a coordinator "
                       "address (host:port)")
    return
  if num_processes is None or process_id is None:
    raise ValueError(f"a coordinator ({coordinator}) needs num_processes and process_id, got "
                     f"{num_processes} and {process_id}")
  if num_processes < 1 or not 0 <= process_id < num_processes:
    raise ValueError(f"process_id must lie in [0, num_processes={num_processes}), got {process_id}")
  if ":" not in coordinator:
    raise ValueError(f"coordinator must be host:port, got {coordinator!r}")
  if os.environ.get("JAX_PLATFORMS", "cpu").startswith("cpu"):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id)
