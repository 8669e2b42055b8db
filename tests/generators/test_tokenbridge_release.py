"""TokenBridge details checked against the release (YuqingWang1029/TokenBridge): the channel head's
forward by hand (first input = projected condition, per-step adaLN condition in the head's width,
affine norm then the modulated final norm with (scale, shift)), the per-step condition inside the
blocks, the release's fixed channel order, guidance on the backbone features, and the last
iteration's guidance scale."""
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtok.eval import generate
from jaxtok.generators import heads, tokenbridge
from jaxtok.quantizers import dimwise

D, V, W, COND = 4, 4, 16, 6
ORDER = (2, 0, 3, 1)


def _random_head(seed, *, num_channels=D, order=ORDER, depth=1):
  """An adaLN head with N(0, 0.3^2) in every parameter (adaLN-zero would hide the conditions)."""
  module = nnx.eval_shape(lambda: heads.DimwiseARHead(
      num_channels=num_channels, levels=V, cond_dim=COND, width=W, depth=depth, heads=2,
      order=order, adaln=True, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(module)
  rng = np.random.default_rng(seed)
  state = jax.tree.map(lambda x: jnp.asarray(0.3 * rng.normal(size=x.shape), x.dtype), state)
  return nnx.merge(graphdef, state)


@pytest.fixture(scope="module")
def head():
  return _random_head(1)


def _np(p):
  return np.asarray(p.get_value(), np.float64)


def _layer_norm(x, eps=1e-6):
  mu = x.mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps)


def test_head_forward_matches_the_release_by_hand():
  h = _random_head(2)
  for blk in h.blocks.blocks:  # zero adaLN: every block is the identity, the rest is by hand
    blk.ada.kernel.set_value(jnp.zeros_like(blk.ada.kernel.get_value()))
    blk.ada.bias.set_value(jnp.zeros_like(blk.ada.bias.get_value()))
  z = np.random.default_rng(3).normal(size=(3, COND))
  tokens = np.random.default_rng(4).integers(0, V, (3, D))
  got = np.asarray(jax.jit(lambda z, t: h(z, t))(jnp.asarray(z, jnp.float32), jnp.asarray(tokens)))

  c = z @ _np(h.cond_proj.kernel) + _np(h.cond_proj.bias)
  ordered = tokens[:, list(ORDER)]
  table = _np(h.embed.embedding)
  want = np.zeros((3, D, V))
  for k in range(D):
    # Release: sequence [c, emb_0(t_0), ..., emb_{D-2}(t_{D-2})] + channel_embed; no start vector.
    x = (c if k == 0 else table[ordered[:, k - 1] + (k - 1) * V]) + _np(h.pos)[k]
    a = c + _np(h.step_cond)[k]  # cond + timesteps_embeddings[k]
    silu = a / (1 + np.exp(-a))
    mod = silu @ _np(h.final_ada.kernel) + _np(h.final_ada.bias)
    scale, shift = mod[:, :W], mod[:, W:]  # FinalLayer: scale, shift = chunk(2)
    y = _layer_norm(x) * _np(h.norm.scale) + _np(h.norm.bias)  # channel_norm (affine)
    y = _layer_norm(y) * (1 + scale) + shift  # norm_final (no affine), modulated
    logits = y @ _np(h.out.kernel) + _np(h.out.bias)
    want[:, ORDER[k]] = logits[:, k * V:(k + 1) * V]  # channel_heads[k] predicts channel order[k]
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_step_condition_modulates_blocks_causally(head):
  z = jax.random.normal(jax.random.key(0), (3, COND))
  t = jax.random.randint(jax.random.key(1), (3, D), 0, V)
  call = jax.jit(lambda m, z, t: m(z, t))
  base = np.asarray(call(head, z, t))
  h2 = nnx.clone(head)
  # Step 1 of ORDER generates channel 0: its own condition row changes channels 0, 3, 1 (steps
  # 1..3) but not channel 2 (step 0), through the blocks' modulation (causal attention).
  h2.step_cond.set_value(head.step_cond.get_value().at[1].add(1.0))
  other = np.asarray(call(h2, z, t))
  np.testing.assert_allclose(other[:, 2], base[:, 2], atol=1e-5)
  for ch in (0, 3, 1):
    assert not np.allclose(other[:, ch], base[:, ch], atol=1e-4), ch
  # The blocks' modulation reads the projected condition (head width), not the backbone's z.
  assert head.blocks.blocks[0].ada.kernel.get_value().shape == (W, 6 * W)


def test_release_channel_order_is_the_ar_order():
  order = tokenbridge.RELEASE_CHANNEL_ORDER
  assert sorted(order) == list(range(16)) and order[0] == 8 and order[-1] == 5
  h = _random_head(5, num_channels=16, order=order)
  call = jax.jit(lambda z, t: h(z, t))
  z = jax.random.normal(jax.random.key(0), (2, COND))
  t = jax.random.randint(jax.random.key(1), (2, 16), 0, V)
  base = np.asarray(call(z, t))
  # Channel 8 is predicted first: it sees no token; channel 1 (second) sees channel 8's token.
  moved = np.asarray(call(z, t.at[:, 8].set((t[:, 8] + 1) % V)))
  np.testing.assert_allclose(moved[:, 8], base[:, 8], atol=1e-5)
  assert not np.allclose(moved[:, 1], base[:, 1], atol=1e-4)
  # Channel 5 is predicted last: its token is never an input.
  last = np.asarray(call(z, t.at[:, 5].set((t[:, 5] + 1) % V)))
  np.testing.assert_allclose(last, base, atol=1e-5)


def test_sample_head_guides_the_features_then_samples_once(head):
  levels = tokenbridge.DimwiseLevels()
  levels.token_dim = D
  levels.init_levels(D, 2, 3.0, 5.0)  # 4 levels = V
  model = types.SimpleNamespace(head=head, dequantize=levels.dequantize)
  zc = jax.random.normal(jax.random.key(2), (5, COND))
  zu = jax.random.normal(jax.random.key(3), (5, COND))
  key = jax.random.key(4)

  @jax.jit
  def run(s):
    return (tokenbridge.sample_head(model, key, zc, zu, s, temperature=0.0),
            tokenbridge.sample_head(model, key, zc, zu, s))

  greedy = lambda z: levels.dequantize(head.sample(key, z, temperature=0.0))
  g3, _ = run(3.0)
  # Release: guided_feature = z_u + cfg (z_c - z_u) (= c + (cfg - 1)(c - u)), one head pass on it.
  np.testing.assert_array_equal(g3, greedy(zc + 2.0 * (zc - zu)))
  g0, _ = run(0.0)
  np.testing.assert_array_equal(g0, greedy(zu))
  _, s1 = run(1.0)  # neutral scale: the conditional features exactly, same draws
  np.testing.assert_array_equal(s1, tokenbridge.sample_head(model, key, zc, None, 1.0))
  spec = levels.spec()
  on_grid = dimwise.indices_to_codes(dimwise.quantize(s1, spec).indices, spec)
  np.testing.assert_array_equal(on_grid, s1)  # sampled latents are dequantized levels


def test_last_iteration_guidance_scale_is_the_releases(monkeypatch):
  """N = 4 tokens in 4 iterations at g = 3: the release's mask_len after each iteration is
  max(1, min(left - 1, floor(4 cos(pi/2 (s+1)/4)))) = 3, 2, 1, 1, so its linear scales
  1 + 2 (4 - mask_len) / 4 are 1.5, 2, 2.5, 2.5 (not 3 at the last iteration)."""
  monkeypatch.setattr(tokenbridge, "sample_head",
                      lambda model, key, zc, zu, scale, **kw: jnp.full((zc.shape[0], 2), scale))
  model = types.SimpleNamespace(num_classes=2, seq_len=4, token_dim=2,
                                condition=lambda tok, mask, cond: jnp.zeros(tok.shape[:2] + (3,)))
  out = generate._tokenbridge(model, jax.random.key(0), jnp.zeros((1,), jnp.int32),
                              generate.Options(steps=4, cfg_scale=3.0))
  np.testing.assert_allclose(np.sort(np.asarray(out)[0, :, 0]), [1.5, 2.0, 2.5, 2.5], rtol=1e-6)
