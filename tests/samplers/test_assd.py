import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtok.generators import any_order
from jaxtok.samplers import assd

KEY = functools.partial(jax.random.key, impl="rbg")  # see tests/samplers/test_masked_diffusion.py

V, N = 3, 3
N_SAMPLES = 20_000
TV_BOUND = float(np.sqrt(V ** N / N_SAMPLES))  # ~0.037; sampling noise alone is ~0.015
ORDER = np.array([2, 0, 1])


@pytest.fixture(scope="module")
def model():
  m = any_order.AnyOrderGPT(codebook_size=V, seq_len=N, num_classes=2, width=16, depth=1, heads=2,
                            class_dropout=0.0, rngs=nnx.Rngs(0))
  m.net.head.kernel[...] = m.net.head.kernel[...] * 60.0  # far from uniform
  return m


def _callables(m):
  draft = lambda seq, order, c, cond: m.parallel_logits(seq, order, c, 3, cond)
  chain = lambda seq, order, cond: m.chain_logits(seq, order, cond)
  return draft, chain


def test_parallel_queries_are_chain_conditionals_of_swapped_orders(model):
  """Query l of `parallel_logits` at context size c is p(x_order[c + l] | first c tokens): the chain
  slot c of the order with positions c and c + l swapped (the context is unchanged)."""
  rs = np.random.RandomState(0)
  seq = jnp.asarray(rs.randint(0, V, (6, N)), jnp.int32)
  order = jnp.asarray(np.stack([rs.permutation(N) for _ in range(6)]), jnp.int32)
  labels = jnp.asarray([0, 1, -1, 0, 1, -1])
  cl = [(c, l) for c in range(N) for l in range(N - c)]
  swaps = []
  for c, l in cl:
    swap = np.arange(N)
    swap[[c, c + l]] = swap[[c + l, c]]
    swaps.append(swap)
  tile = lambda x: jnp.tile(x, (N,) + (1,) * (x.ndim - 1))
  par = jax.jit(lambda s, o, c, y: model.parallel_logits(s, o, c, N, y))(
      tile(seq), tile(order), jnp.repeat(jnp.arange(N), 6), tile(labels)).reshape(N, 6, N, V)
  sw = np.concatenate(swaps)
  ref = jax.jit(model.chain_logits)(
      seq[:, sw].reshape(6, len(cl), N).transpose(1, 0, 2).reshape(-1, N),
      order[:, sw].reshape(6, len(cl), N).transpose(1, 0, 2).reshape(-1, N),
      jnp.tile(labels, len(cl))).reshape(len(cl), 6, N, V)
  for i, (c, l) in enumerate(cl):
    np.testing.assert_allclose(par[c, :, l], ref[i, :, c], atol=2e-4)


def _chain_joint(m, label):
  seqs = jnp.asarray(list(itertools.product(range(V), repeat=N)), jnp.int32)
  logp = jax.nn.log_softmax(m.chain_logits(seqs, jnp.broadcast_to(jnp.asarray(ORDER), seqs.shape),
                                           jnp.full((len(seqs),), label)), -1)
  joint = np.exp(np.asarray(jnp.take_along_axis(logp, seqs[..., None], -1)[..., 0].sum(-1), np.float64))
  return joint / joint.sum()


def test_assd_matches_the_chain_joint_and_calls_at_most_one_per_token(model):
  draft, chain = _callables(model)
  orders = jnp.broadcast_to(jnp.asarray(ORDER, jnp.int32), (N_SAMPLES, N))
  labels = jnp.ones((N_SAMPLES,), jnp.int32)
  tokens, stats = jax.jit(lambda r: assd.sample(r, draft, chain, orders, num_draft=3, cond=labels))(KEY(0))
  joint = _chain_joint(model, 1)
  # the product of the parallel (independent) draft conditionals is far from the chain
  first = jax.nn.softmax(model.parallel_logits(jnp.zeros((1, N), jnp.int32), orders[:1],
                                               jnp.zeros((1,), jnp.int32), 3, labels[:1]), -1)[0]
  indep = np.einsum("a,b,c->abc", *np.asarray(first, np.float64)).reshape(-1)
  assert 0.5 * np.abs(indep - joint).sum() > 0.1
  in_order = np.asarray(tokens)[:, ORDER]
  freq = np.bincount(in_order @ (V ** np.arange(N)[::-1]), minlength=V ** N) / N_SAMPLES
  assert 0.5 * np.abs(freq - joint).sum() < TV_BOUND
  s = {k: np.asarray(x) for k, x in stats.items()}
  assert np.all(s["model_calls"] <= N) and np.all(s["model_calls"] >= 2)
  # one iteration (2 calls) decodes all 3 unless draft 1 is rejected (then 1 more call for the last)
  assert np.all((s["iterations"] == 1) | ((s["iterations"] == 2) & (s["model_calls"] == 3)))
  assert 0 < s["accepted"].sum() < s["drafted"].sum()


def test_loss_falls_and_errors():
  m = any_order.make_model(dict(name="any_order", codebook_size=8, seq_len=6, num_classes=0,
                                width=16, depth=1, heads=2, class_dropout=0.0), rngs=nnx.Rngs(1))
  tokens = jnp.asarray(np.random.RandomState(0).randint(0, 8, (4, 6)), jnp.int32)
  graph, params = nnx.split(m, nnx.Param)

  @jax.jit
  def step(params, i):
    lossfn = lambda p: any_order.loss(nnx.merge(graph, p), tokens, None, rng=KEY(i))[0]
    val, g = jax.value_and_grad(lossfn)(params)
    return jax.tree.map(lambda a, b: a - 0.5 * b, params, g), val

  vals = []
  for i in range(30):
    params, val = step(params, i)
    vals.append(float(val))
  assert np.mean(vals[-5:]) < 0.7 * np.mean(vals[:5])
  with pytest.raises(ValueError, match="unknown"):
    any_order.make_model(dict(name="any_order", codebook_size=8, seq_len=6, bogus=1), rngs=nnx.Rngs(0))
  draft, chain = _callables(m)
  with pytest.raises(ValueError, match="orders must hold a permutation"):
    assd.sample(KEY(0), draft, chain, jnp.asarray([[0, 0, 1, 2, 3, 4]]), num_draft=2)
  with pytest.raises(ValueError, match="num_draft must be an int >= 1, got 0"):
    assd.sample(KEY(0), draft, chain, jnp.asarray([[0, 1, 2, 3, 4, 5]]), num_draft=0)


def test_config_registered_and_builds():
  from jaxtok.configs import any_order as config
  from jaxtok.train import generator
  c = config.get_config("tiny,tokens=12,classes=3")
  assert c.model.name == "any_order" and c.model.seq_len == 12 and c.model.num_classes == 3
  generator.model_config(c)
  m = nnx.eval_shape(lambda: generator.generator_module("any_order").make_model(c.model,
                                                                              rngs=nnx.Rngs(0)))
  assert isinstance(m, any_order.AnyOrderGPT) and m.own_pos.embedding.shape == (13, 32)
  with pytest.raises(ValueError, match="'tokens' must be an int"):
    config.get_config("tokens=12.5")
