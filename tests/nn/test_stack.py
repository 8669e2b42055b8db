"""Stack: scanned == unrolled (outputs, gradients, KV cache), remat policies give equal gradients,
jit/grad compatibility, activation sharding constraints under a mesh, and the config options."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtok import sharding
from jaxtok.nn import options
from jaxtok.nn.block import Block
from jaxtok.nn.stack import Stack

DEPTH = 3


def _stack(scan=False, remat="none", **block):
  make = lambda r: Block(16, 2, mlp_hidden=32, mlp="swiglu", norm="rms", rope="1d", rngs=r, **block)
  return Stack(DEPTH, make, scan_layers=scan, remat=remat, rngs=nnx.Rngs(0))


def _scanned_copy(unrolled, **kw):
  """A scanned stack holding the unrolled stack's weights (stacked along a new layer axis)."""
  scanned = _stack(scan=True, **kw)
  layers = nnx.to_pure_dict(nnx.state(unrolled))["blocks"]
  state = nnx.state(scanned)
  nnx.replace_by_pure_dict(state, {"blocks": jax.tree.map(lambda *a: jnp.stack(a),
                                                          *[layers[i] for i in range(DEPTH)])})
  nnx.update(scanned, state)
  return scanned


def _loss_grads(model, x):
  graphdef, state = nnx.split(model)
  loss = lambda s: jnp.sum(nnx.merge(graphdef, s)(x, causal=True) ** 2)
  return jax.jit(jax.value_and_grad(loss))(state)


def test_scanned_equals_unrolled_outputs_and_gradients():
  unrolled = _stack()
  scanned = _scanned_copy(unrolled)
  spec = nnx.get_partition_spec(nnx.state(scanned))["blocks"]["attn"]["qkv"].get_value()
  assert tuple(spec) == ("layers", "embed", None, "heads", "kv")
  x = jax.random.normal(jax.random.key(1), (2, 5, 16))
  np.testing.assert_allclose(scanned(x, causal=True), unrolled(x, causal=True), rtol=1e-5, atol=1e-5)
  (lu, gu), (ls, gs) = _loss_grads(unrolled, x), _loss_grads(scanned, x)
  np.testing.assert_allclose(ls, lu, rtol=1e-5)
  stacked = jax.tree.map(lambda *a: jnp.stack(a), *[gu["blocks"][i] for i in range(DEPTH)])
  for a, b in zip(jax.tree.leaves(gs["blocks"]), jax.tree.leaves(stacked)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  assert any(float(jnp.abs(a).sum()) > 0 for a in jax.tree.leaves(gs))


def test_capture_returns_the_hidden_state_after_k_blocks_scanned_and_unrolled():
  unrolled = _stack()
  scanned = _scanned_copy(unrolled)
  x = jax.random.normal(jax.random.key(2), (2, 5, 16))
  want = x
  for i, block in enumerate(unrolled.blocks):
    want = block(want, causal=True)
    for stack in (unrolled, scanned):
      out, hidden = stack(x, causal=True, capture=i + 1)
      np.testing.assert_allclose(hidden, want, rtol=1e-5, atol=1e-5)
      np.testing.assert_allclose(out, unrolled(x, causal=True), rtol=1e-5, atol=1e-5)
  for bad in (0, DEPTH + 1, True, 1.0):
    with pytest.raises(ValueError, match="capture must be an int in"):
      unrolled(x, capture=bad)


@pytest.mark.parametrize("scan", [False, True])
def test_remat_policies_give_equal_gradients(scan):
  x = jax.random.normal(jax.random.key(2), (2, 5, 16))
  base = _loss_grads(_stack(scan=scan), x)
  for policy in ("full", "dots", True):
    got = _loss_grads(_stack(scan=scan, remat=policy), x)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(base)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="remat must be one of"):
    _stack(remat="some")


def test_kv_cache_scanned_equals_unrolled_equals_recompute():
  unrolled = _stack()
  scanned = _scanned_copy(unrolled)
  x = jax.random.normal(jax.random.key(3), (2, 6, 16))
  full = unrolled(x, causal=True)
  for model in (unrolled, scanned):
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state, x):
      m = nnx.merge(graphdef, state)
      y0, cache = m.extend(x[:, :2], m.init_cache(2, 6), 0)
      outs = [y0]
      for i in range(2, 6):
        y, cache = m.extend(x[:, i:i + 1], cache, jnp.int32(i))
        outs.append(y)
      return jnp.concatenate(outs, axis=1)

    np.testing.assert_allclose(run(state, x), full, rtol=1e-5, atol=1e-5)
  assert scanned.init_cache(2, 6).k.shape == (DEPTH, 2, 2, 6, 8)  # [L, B, H, S, E]
  assert len(unrolled.init_cache(2, 6)) == DEPTH


def test_activation_constraints_under_a_mesh():
  model = _stack()
  x = jax.random.normal(jax.random.key(4), (8, 5, 16))
  ref = model(x, causal=True)
  graphdef, state = nnx.split(model)
  f = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x, causal=True))
  mesh = sharding.make_mesh((("data", 4), ("fsdp", 1), ("tensor", 2)))
  assert "sharding_constraint" not in f.lower(state, x).as_text()  # no mesh: no constraint
  with jax.set_mesh(mesh):
    text = f.lower(state, x).as_text()
    np.testing.assert_allclose(f(state, x), ref, rtol=1e-5, atol=1e-5)
    with sharding.activation_rules([("act_batch", None)]):  # read at trace time: a fresh jit
      replicated = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x, causal=True)).lower(state, x).as_text()
  # Shardy text: the block activations are pinned to (act_batch -> data, -, -).
  assert 'sharding_constraint' in text and '[{"data"}, {}, {}]' in text
  assert '[{"data"}, {}, {}]' not in replicated


def test_model_kwargs_options_and_unknown_keys():
  got = options.model_kwargs(dict(name="x", width=3, dtype="bfloat16", remat=True,
                                  scan_layers=True, attention_impl="xla"), ("width", "depth"), model="m")
  assert got == dict(width=3, dtype=jnp.bfloat16, remat="full", scan_layers=True, attention_impl="xla")
  with pytest.raises(ValueError, match=r"unknown m config key\(s\) \['widht'\]; valid keys: .*'width'"):
    options.model_kwargs(dict(widht=3), ("width",), model="m")
  with pytest.raises(ValueError, match="attention implementation"):
    options.model_kwargs(dict(attention_impl="flash"), (), model="m")
  with pytest.raises(ValueError, match="dtype"):
    options.model_kwargs(dict(dtype="int32"), (), model="m")
