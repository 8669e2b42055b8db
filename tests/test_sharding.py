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


def test_importing_jaxtok_leaves_flax_global_state_alone():
  """Importing jaxtok (every package) does not switch Flax's eager sharding; our parameters opt out
  one by one, so a user's own eager-sharded modules keep the global setting they chose."""
  import subprocess
  import sys
  code = ("from flax import nnx; before = nnx.using_eager_sharding(); "
          "import jaxtok, jaxtok.sharding, jaxtok.tokenizers.titok, jaxtok.generators.gpt, "
          "jaxtok.train.loop; print(before, nnx.using_eager_sharding())")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  before, after = out.stdout.split()
  assert before == after == "True", out.stdout


def test_logical_params_build_under_a_mesh_with_global_eager_sharding_on():
  # With eager sharding on, a variable whose names are not mesh axes would fail to be placed at
  # creation; logical_init's per-variable opt-out keeps model building independent of that setting.
  mesh = shd.make_mesh([("data", 2), ("fsdp", 2), ("tensor", 2)])
  with nnx.use_eager_sharding(True), jax.set_mesh(mesh):
    model = _Mlp(nnx.Rngs(0))
  assert model.up.kernel.get_metadata()["eager_sharding"] is False
  specs = shd.state_shardings(nnx.state(model, nnx.Param), mesh)
  assert specs["up"]["kernel"].spec == P("fsdp", "tensor")


def test_state_shardings_keep_masked_nodes_of_a_frozen_parameter_excluded_from_decay():
  """A frozen parameter that the weight-decay mask also excludes leaves a MaskedNode under a masked
  optimizer state, where nnx.get_partition_spec gives None: the shardings keep the node (this failed
  with a pytree-structure error for ResGen's frozen codebook)."""
  import optax
  from jaxtok.configs import resgen
  from jaxtok.train import generator, state as state_lib
  c = resgen.get_config("tiny")
  c.optim.frozen_patterns = [r"^codebook$"]
  _, _, init_fn, _ = generator.build(c, 10)
  abstract, shardings = state_lib.abstract_train_state(
      init_fn, jax.random.key(0), state_lib.mesh_from_config(c), state_lib.rules_from_config(c))
  masked = [x for x in jax.tree.leaves(abstract["opt_state"], is_leaf=lambda x: isinstance(
      x, optax.MaskedNode)) if isinstance(x, optax.MaskedNode)]
  assert masked  # the codebook's moments are not kept
  assert jax.tree.structure(abstract) == jax.tree.structure(shardings)
