"""Tests of the logical-axis sharding helpers."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from jaxtok import sharding as shd


class _Mlp(nnx.Module):

  def __init__(self, rngs):
    init = nnx.initializers.lecun_normal()
    self.up = nnx.Linear(16, 8, kernel_init=shd.logical_init(init, "embed", "mlp"), rngs=rngs)
    self.odd = nnx.Linear(16, 3, kernel_init=shd.logical_init(init, "embed", "mlp"), rngs=rngs)


def test_make_mesh_fills_minus_one_and_rejects_bad_specs():
  mesh = shd.make_mesh([("data", -1), ("fsdp", 2), ("tensor", 1)])
  assert dict(mesh.shape) == {"data": 4, "fsdp": 2, "tensor": 1}
  with pytest.raises(ValueError, match="needs 6 devices, but 8 are given"):
    shd.make_mesh([("data", 3), ("fsdp", 2)])
  with pytest.raises(ValueError, match="at most one -1"):
    shd.make_mesh([("data", -1), ("fsdp", -1)])


def test_logical_to_mesh_uses_each_axis_once_and_drops_size_one_axes():
  mesh = shd.make_mesh([("data", 2), ("fsdp", 2), ("tensor", 2)])
  assert shd.logical_to_mesh(("act_batch", "embed"), mesh=mesh) == P(("data", "fsdp"), None)
  assert shd.logical_to_mesh(("embed", "mlp"), mesh=mesh) == P("fsdp", "tensor")
  mesh1 = shd.make_mesh([("data", 8), ("fsdp", 1), ("tensor", 1)])
  assert shd.logical_to_mesh(("embed", "mlp"), mesh=mesh1) == P(None, None)


def test_state_shardings_follow_names_and_skip_indivisible_dims():
  _, state = nnx.split(_Mlp(nnx.Rngs(0)))
  mesh = shd.make_mesh([("data", 2), ("fsdp", 2), ("tensor", 2)])
  sh = shd.state_shardings(state, mesh)
  assert sh["up"]["kernel"].value.spec == P("fsdp", "tensor")
  assert sh["odd"]["kernel"].value.spec == P("fsdp", None)  # 3 outputs do not split over 2
  placed = jax.jit(lambda s: s, out_shardings=sh)(state)
  np.testing.assert_array_equal(placed["up"]["kernel"].get_value(), state["up"]["kernel"].get_value())
  assert placed["up"]["kernel"].get_value().sharding.spec == P("fsdp", "tensor")
