"""FlowTok: the text <-> image-token flow (oracle exactness both ways), the loss against its written
definition, the CFG indicator, the refusals, the registries, and a tiny model whose loss falls."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtok.generators import flowtok as F

K, D, C, P, B = 6, 3, 8, 5, 4
CONFIG = dict(name="flowtok", token_dim=D, seq_len=K, text_dim=C, pooled_dim=P, direction="t2i",
              width=16, depth=1, heads=2, projector_width=16, projector_depth=1, projector_heads=2,
              align_hidden=16, cfg_prob=0.5, kl_weight=0.01, align_weight=1.0)


def _filled(make, std, seed=0, unit_scales=False):
  """(graphdef, state) of the module make(rngs) with every parameter drawn from N(0, std^2) in
  numpy (unit_scales: norm scales 1), filled into the abstract module: an nnx init, eager or
  jitted, costs seconds of compilation."""
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: make(nnx.Rngs(0))))
  rng = np.random.default_rng(seed)

  def fill(path, a):
    if unit_scales and getattr(path[-1], "key", None) == "scale":
      return jnp.ones(a.shape, a.dtype)
    return jnp.asarray(rng.normal(0, std, a.shape), a.dtype)

  return graphdef, jax.tree_util.tree_map_with_path(fill, abstract)


def _perturbed(cfg, seed=0):
  """A model with every parameter drawn from N(0, 0.2^2): the zero-initialised output and AdaLN
  layers would otherwise make the velocity identically 0."""
  return nnx.merge(*_filled(lambda rngs: F.make_model(cfg, rngs=rngs), 0.2, seed))


@functools.lru_cache(maxsize=None)
def _model(direction="t2i"):
  return _perturbed(dict(CONFIG, direction=direction))


def _ce(logits):
  """Mean cross-entropy of rows against the diagonal (numpy)."""
  return -np.mean(np.diag(logits) - np.log(np.exp(logits).sum(1)))


def _batch(seed=0, b=B):
  rng = np.random.default_rng(seed)
  text = jnp.asarray(rng.normal(0, 1, (b, K, C)), jnp.float32)
  pooled = jnp.asarray(rng.normal(0, 1, (b, P)), jnp.float32)
  image = jnp.asarray(rng.normal(0, 1, (b, K, D)), jnp.float32)
  return text, pooled, image


def test_oracle_velocity_maps_text_tokens_exactly_to_image_tokens_and_back():
  """Linear path, v = x1 - x0: Euler and Heun are exact for this constant field, forward (text ->
  image) and backward (image -> text); the straight-line field (x1 - x) / (1 - t) is also exact for
  Euler, which checks the time grid (t = i / steps)."""
  rng = np.random.default_rng(0)
  x0 = jnp.asarray(rng.normal(0, 1, (2, K, D)), jnp.float32)  # text tokens
  x1 = jnp.asarray(rng.normal(0, 1, (2, K, D)), jnp.float32)  # image tokens
  const = lambda x, t, null: jnp.broadcast_to(x1 - x0, x.shape)
  for method in ("euler", "heun"):
    img = F.transport(const, x0, steps=3, method=method)
    np.testing.assert_allclose(np.asarray(img), np.asarray(x1), atol=1e-5)
    back = F.transport(const, img, steps=5, method=method, reverse=True)
    np.testing.assert_allclose(np.asarray(back), np.asarray(x0), atol=1e-5)
  line = lambda x, t, null: (x1 - x) / (1.0 - t)
  np.testing.assert_allclose(np.asarray(F.transport(line, x0, steps=7)), np.asarray(x1), atol=1e-5)
  # the path and target of the loss are the ones the oracle integrates
  t = jnp.asarray([0.25, 0.5])
  xt = F.interpolate(x0, x1, t)
  np.testing.assert_allclose(np.asarray(xt[0]), np.asarray(0.75 * x0[0] + 0.25 * x1[0]), atol=1e-6)


def test_clip_contrastive_loss_by_hand():
  eye = jnp.eye(2)
  # logits = I at scale 1: each row's CE is -log(e / (e + 1)) = log(1 + 1/e)
  np.testing.assert_allclose(float(F.clip_contrastive_loss(eye, 3 * eye, 0.0)),
                             math.log(1 + math.exp(-1)), rtol=1e-6)
  a = jnp.asarray([[1.0, 2.0], [3.0, -1.0], [0.5, 0.5]])
  b = jnp.asarray([[0.0, 1.0], [1.0, 1.0], [-2.0, 1.0]])
  an = np.asarray(a) / np.linalg.norm(np.asarray(a), axis=1, keepdims=True)
  bn = np.asarray(b) / np.linalg.norm(np.asarray(b), axis=1, keepdims=True)
  logits = 2.0 * an @ bn.T
  np.testing.assert_allclose(float(F.clip_contrastive_loss(a, b, math.log(2.0))),
                             (_ce(logits) + _ce(logits.T)) / 2, rtol=1e-5)
  with pytest.raises(ValueError, match="paired features"):
    F.clip_contrastive_loss(a, b[:2], 0.0)


def test_loss_equals_its_written_definition():
  """L = mean|v(x_t, t, null) - (x1' - Z_T)|^2 + g1 KL + g2 InfoNCE(T_P, MLP(Z_T)), with x1' the
  image tokens whose null rows take the next row's, recomputed here in numpy from the same draws."""
  model = _model()
  text, pooled, image = _batch()
  labels = {"text": text, "pooled": pooled}
  key = jax.random.key(3)
  r_z, r_t, r_null = jax.random.split(key, 3)

  @jax.jit
  def draws(m):
    value, metrics = F.loss(m, image, labels, rng=key)
    # the same draws, written out: Z_T, logit-normal t, indicator, shuffled targets, x_t
    mean, logvar = m.projector(text)
    z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(r_z, mean.shape)
    t = jax.nn.sigmoid(jax.random.normal(r_t, (B,)))
    null = jax.random.bernoulli(r_null, 0.5, (B,))
    x1 = jnp.where(null[:, None, None], image[(jnp.arange(B) + 1) % B], image)
    xt = (1 - t)[:, None, None] * z + t[:, None, None] * x1
    return value, metrics, mean, logvar, z, null, x1, m.velocity(xt, t, null), m.align_features(z)

  value, metrics, mean, logvar, z, null, x1, v, feats = draws(model)
  null, x1, z_np, v = np.asarray(null), np.asarray(x1), np.asarray(z), np.asarray(v)
  assert 0 < null.sum() < B, null  # the draw exercises both branches
  np.testing.assert_array_equal(x1[null], np.asarray(image)[(np.flatnonzero(null) + 1) % B])
  fm = np.mean((v - (x1 - z_np))**2)
  mu, lv = np.asarray(mean, np.float64), np.asarray(logvar, np.float64)
  kl = np.mean(0.5 * np.sum(mu**2 + np.exp(lv) - 1 - lv, axis=(1, 2)))
  f, p = np.asarray(feats, np.float64), np.asarray(pooled, np.float64)
  f, p = f / np.linalg.norm(f, axis=1, keepdims=True), p / np.linalg.norm(p, axis=1, keepdims=True)
  logits = np.exp(float(model.logit_scale.get_value())) * p @ f.T
  align = (_ce(logits) + _ce(logits.T)) / 2
  np.testing.assert_allclose(float(metrics["flow_loss"]), fm, rtol=1e-4)
  np.testing.assert_allclose(float(metrics["kl"]), kl, rtol=1e-4)
  np.testing.assert_allclose(float(metrics["align"]), align, rtol=1e-4)
  np.testing.assert_allclose(float(value), fm + 0.01 * kl + align, rtol=1e-4)


def test_guidance_scale_one_is_unguided_and_the_indicator_branch_combines_by_hand():
  model = _model()
  text, _, _ = _batch(1, b=2)

  @jax.jit
  def run(m, s):
    traced = F.text_to_image(m, None, text, steps=3, cfg_scale=s)  # a traced scale: both branches
    plain = F.text_to_image(m, None, text, steps=3)  # Python 1: one branch only
    one = F.text_to_image(m, None, text, steps=1, cfg_scale=3.0)
    z, _, _ = m.project_text(text)
    c = m.velocity(z, 0.0, jnp.zeros((2,), jnp.int32))
    u = m.velocity(z, 0.0, jnp.ones((2,), jnp.int32))
    return traced, plain, one, z + u + 3.0 * (c - u)

  traced, plain, one, by_hand = run(model, 1.0)
  np.testing.assert_allclose(np.asarray(traced), np.asarray(plain), atol=1e-5)
  # one Euler step from t = 0: z + u + s (c - u)
  np.testing.assert_allclose(np.asarray(one), np.asarray(by_hand), atol=1e-5)
  guided = np.asarray(run(model, 3.0)[0])
  assert np.abs(guided - np.asarray(plain)).max() > 1e-3  # the indicator changes the velocity


def test_text_to_image_then_image_to_text_returns_the_text_tokens():
  """With the model's own field: forward (t2i) then the same ODE backward recovers Z_T up to the
  integration error; an "i2t" model runs the other way round. The sampler is one jitted call."""
  text, _, _ = _batch(2, b=2)

  @jax.jit
  def there_and_back(m):
    img = F.text_to_image(m, None, text, steps=16, method="heun")
    # sampling draws Z_T from N(mean, var): the key matters
    draws = [F.sample(m, jax.random.key(i), {"text": text}, steps=2) for i in (0, 1)]
    return m.project_text(text)[0], img, F.image_to_text(m, img, steps=16, method="heun"), draws

  for direction in ("t2i", "i2t"):
    z, img, back, (a, b) = there_and_back(_model(direction))
    assert float(jnp.abs(img - z).max()) > 0.1  # the flow moved the tokens
    np.testing.assert_allclose(np.asarray(back), np.asarray(z), atol=2e-3)
    assert a.shape == (2, K, D) and a.dtype == jnp.float32 and float(jnp.abs(a - b).max()) > 1e-4


def test_refusals_name_the_argument():
  model = _model()
  text, pooled, image = _batch()
  with pytest.raises(ValueError, match=r"x must be float \[B, 6, 3\]"):
    model.velocity(image[..., :2], 0.5)
  with pytest.raises(ValueError, match="text length = seq_len"):
    model.project_text(text[:, :5])
  with pytest.raises(TypeError, match="tokens must be floating"):
    F.loss(model, image.astype(jnp.int32), {"text": text, "pooled": pooled}, rng=jax.random.key(0))
  with pytest.raises(TypeError, match="text-condition dict"):
    F.loss(model, image, jnp.zeros((B,), jnp.int32), rng=jax.random.key(0))
  with pytest.raises(ValueError, match=r"pooled must be float \[B=4, pooled_dim=5\]"):
    F.loss(model, image, {"text": text, "pooled": pooled[:, :3]}, rng=jax.random.key(0))
  with pytest.raises(ValueError, match="batch size 4"):
    F.loss(model, image, {"text": text[:2], "pooled": pooled[:2]}, rng=jax.random.key(0))
  with pytest.raises(ValueError, match="unknown flowtok config key"):
    F.make_model(dict(CONFIG, widht=8), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="direction must be one of"):
    F.make_model(dict(CONFIG, direction="both"), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="cfg_prob"):
    F.make_model(dict(CONFIG, cfg_prob=1.0), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="method must be"):
    F.transport(lambda x, t, n: x, image, steps=2, method="rk4")


def test_config_registries_and_text_sampler():
  from jaxtok.configs import flowtok as cfg_lib
  from jaxtok.eval import generate
  from jaxtok.train import generator
  for arg in ("size=B", "size=XL,i2t", "tiny"):
    c = cfg_lib.get_config(arg)
    assert c.model.name == "flowtok" and generator.generator_module("flowtok") is F
  assert cfg_lib.get_config("size=XL,i2t").model.direction == "i2t"
  assert (cfg_lib.get_config("size=XL").model.width, cfg_lib.get_config("size=XL").model.depth) == (1152, 28)
  with pytest.raises(ValueError, match="size"):
    cfg_lib.get_config("size=H")
  c = cfg_lib.get_config("tiny")
  abstract = nnx.eval_shape(lambda: F.make_model(c.model, rngs=nnx.Rngs(0)))  # the config builds
  assert (abstract.seq_len, abstract.token_dim, abstract.direction) == (8, 4, "t2i")
  opts = generate.options_from_config(c.sampling)
  assert (opts.steps, opts.cfg_scale) == (4, 1.0)
  graphdef, params = nnx.split(_model())
  sampler = generate.make_text_sampler("flowtok", graphdef, params, opts)
  text, pooled, _ = _batch(4, b=2)
  out = sampler(jax.random.key(0), {"text": text, "pooled": pooled}, None)
  assert out.shape == (2, K, D) and out.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(out), np.asarray(
      sampler(jax.random.key(0), {"text": text, "pooled": pooled}, None)))


@pytest.mark.slow
def test_tiny_flowtok_loss_falls_with_clip_features():
  """The generator trainer's step on a fixed batch: two captions' features from a tiny random CLIP
  text tower, each paired with its own fixed image tokens; 30 Adam steps: the flow loss and the
  total fall."""
  import optax
  from jaxtok.nn import clip_text
  from jaxtok.train import generator, state as state_lib
  clip_cfg = dict(width=C, depth=1, num_heads=2, vocab_size=64, context_length=K, embed_dim=P)
  _, clip_params = _filled(lambda rngs: clip_text.make_model(clip_cfg, rngs=rngs), 0.3, 1, True)
  ids = jnp.asarray([[1, 5, 7, 63, 0, 0], [2, 9, 63, 0, 0, 0]], jnp.int32)
  feats = jax.jit(clip_text.features_fn(clip_cfg))(clip_params, ids)
  rows = np.arange(8) % 2
  rng = np.random.default_rng(0)
  image = jnp.asarray(rng.normal(0, 1, (2, K, D)), jnp.float32)[rows]
  labels = {"text": feats["penultimate"][rows], "pooled": feats["pooled"][rows],
            "null_text": jnp.zeros((8, K, C)), "null_pooled": jnp.zeros((8, P))}
  model = state_lib.model_def(lambda rngs: F.make_model(dict(CONFIG, cfg_prob=0.1), rngs=rngs))
  tx = optax.adam(1e-2)
  params = _filled(lambda rngs: F.make_model(dict(CONFIG, cfg_prob=0.1), rngs=rngs), 0.02, 2, True)[1]
  state = {"step": jnp.zeros((), jnp.int32), "params": params}
  state["opt_state"] = tx.init(state["params"])
  step = jax.jit(generator.make_train_step("flowtok", model, tx))
  losses, flows = [], []
  for _ in range(30):
    state, metrics = step(state, {"tokens": image, "label": labels}, jax.random.key(1))
    losses.append(float(metrics["loss"]))
    flows.append(float(metrics["flow_loss"]))
  assert np.isfinite(losses).all()
  # the alignment term cannot fall far: 4 rows share each caption (its floor is log 4)
  assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses
  assert np.mean(flows[-5:]) < 0.4 * np.mean(flows[:5]), flows
