"""Optimizer recipe: decay masks by path, warmup-cosine values, AdamW decoupled decay, EMA closed form."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxtok.train import optim


class Net(nnx.Module):

  def __init__(self, rngs):
    self.patch_embed = nnx.Linear(4, 8, rngs=rngs)
    self.attn_qkv = nnx.Linear(8, 24, rngs=rngs)
    self.ln_1 = nnx.LayerNorm(8, rngs=rngs)
    self.latent_tokens = nnx.Param(jnp.ones((3, 8)))
    self.mask_token = nnx.Param(jnp.ones((1, 1, 8)))
    self.codebook = nnx.Param(jnp.ones((16, 8)))
    self.mlp = nnx.Linear(8, 8, rngs=rngs)


def test_decay_mask_by_path_and_ndim():
  params = nnx.split(Net(nnx.Rngs(0)))[1]
  mask = optim.decay_mask(params)
  flat = {optim.path_to_str(p): v for p, v in jax.tree_util.tree_flatten_with_path(mask)[0]}
  decays = sorted(k for k, v in flat.items() if v)
  # Only the 2-D kernels of ordinary layers decay; "patch_embed" follows TiTok's name rule (embed).
  assert decays == ["attn_qkv/kernel", "mlp/kernel"]
  assert flat["latent_tokens"] is False and flat["codebook"] is False and flat["mask_token"] is False
  assert flat["ln_1/scale"] is False and flat["mlp/bias"] is False
  # Custom patterns: nothing excluded by name -> every >=2-D parameter decays.
  custom = optim.decay_mask(params, patterns=())
  flat = {optim.path_to_str(p): v for p, v in jax.tree_util.tree_flatten_with_path(custom)[0]}
  assert flat["codebook"] is True and flat["mlp/bias"] is False


def test_warmup_cosine_hand_values():
  s = optim.warmup_cosine(base_lr=1.0, total_steps=110, warmup_steps=10, end_lr=0.1)
  np.testing.assert_allclose(float(s(0)), 0.0)
  np.testing.assert_allclose(float(s(5)), 0.5)
  np.testing.assert_allclose(float(s(10)), 1.0)
  np.testing.assert_allclose(float(s(60)), 0.55, rtol=1e-6)  # half way: (1 + 0.1) / 2
  # a quarter of the cosine: 0.1 + 0.9 * (1 + cos(pi/4)) / 2
  np.testing.assert_allclose(float(s(35)), 0.1 + 0.9 * (1 + np.cos(np.pi / 4)) / 2, rtol=1e-6)
  np.testing.assert_allclose(float(s(110)), 0.1, rtol=1e-6)
  np.testing.assert_allclose(float(s(500)), 0.1, rtol=1e-6)
  with pytest.raises(ValueError, match="warmup_steps"):
    optim.warmup_cosine(base_lr=1.0, total_steps=10, warmup_steps=11)
  with pytest.raises(ValueError, match="total_steps"):
    optim.warmup_cosine(base_lr=1.0, total_steps=0)


def test_adamw_decays_only_masked_params():
  params = {"w": jnp.ones((2, 2)), "bias": jnp.ones((2,)), "codebook": jnp.ones((4, 2))}
  tx = optim.make_optimizer(base_lr=0.1, total_steps=10, weight_decay=0.5, grad_clip=1.0)
  zeros = jax.tree.map(jnp.zeros_like, params)
  upd, _ = tx.update(zeros, tx.init(params), params)
  # lr(0) = 0.1 (no warmup); zero gradient -> the update is -lr * wd * p on decayed params only.
  np.testing.assert_allclose(upd["w"], -0.1 * 0.5 * np.ones((2, 2)), rtol=1e-6)
  np.testing.assert_array_equal(upd["bias"], 0.0)
  np.testing.assert_array_equal(upd["codebook"], 0.0)


def test_grad_clip_and_mu_dtype():
  params = {"w": jnp.zeros((3,))}
  tx = optim.make_optimizer(base_lr=1.0, total_steps=10, weight_decay=0.0, grad_clip=1.0,
                            mu_dtype="bfloat16", b1=0.0, b2=0.0, eps=1e-12)
  state = tx.init(params)
  assert state[1][0].mu["w"].dtype == jnp.bfloat16
  # b1 = b2 = 0: the update is -lr * g / |g| elementwise = -sign(g) whatever the clipping.
  upd, _ = tx.update({"w": jnp.array([30.0, -40.0, 0.0])}, state, params)  # 0/eps = 0
  np.testing.assert_allclose(upd["w"], [-1.0, 1.0, 0.0], atol=1e-6)
  clip = optax.clip_by_global_norm(1.0)
  g, _ = clip.update({"w": jnp.array([3.0, 4.0])}, clip.init(None))
  np.testing.assert_allclose(g["w"], [0.6, 0.8], rtol=1e-6)
  with pytest.raises(ValueError, match="b1"):
    optim.make_optimizer(base_lr=1.0, total_steps=10, b1=1.5)


def test_ema_closed_form():
  ema0 = {"a": jnp.array([1.0, -2.0])}
  p = {"a": jnp.array([3.0, 5.0])}
  ema = ema0
  for _ in range(7):
    ema = optim.ema_update(ema, p, 0.9)
  expected = p["a"] + 0.9 ** 7 * (ema0["a"] - p["a"])
  np.testing.assert_allclose(ema["a"], expected, rtol=1e-6)
  # bf16 EMA is accumulated in float32 then cast back.
  out = optim.ema_update({"a": jnp.ones((2,), jnp.bfloat16)}, {"a": jnp.zeros((2,))}, 0.5)
  assert out["a"].dtype == jnp.bfloat16 and float(out["a"][0]) == 0.5


def test_flextok_vae_is_not_decayed_and_frozen_patterns_zero_updates():
  # FlexTok's VAE lives under "vae/": never decayed (its gradients are zero, so it stays exact).
  params = {"vae": {"conv": {"kernel": jnp.ones((3, 3))}}, "enc": {"kernel": jnp.ones((3, 3))}}
  mask = optim.decay_mask(params)
  assert mask["vae"]["conv"]["kernel"] is False and mask["enc"]["kernel"] is True
  tx = optim.make_optimizer(base_lr=0.1, total_steps=10, weight_decay=0.5, grad_clip=None)
  zeros = jax.tree.map(jnp.zeros_like, params)
  upd, _ = tx.update(zeros, tx.init(params), params)
  np.testing.assert_array_equal(upd["vae"]["conv"]["kernel"], 0.0)
  np.testing.assert_allclose(upd["enc"]["kernel"], -0.1 * 0.5, rtol=1e-6)
  # frozen_patterns: zero update even with a non-zero gradient, and no decay.
  tx = optim.make_optimizer(base_lr=0.1, total_steps=10, weight_decay=0.5, frozen_patterns=("^enc/",))
  ones = jax.tree.map(jnp.ones_like, params)
  upd, _ = tx.update(ones, tx.init(params), params)
  np.testing.assert_array_equal(upd["enc"]["kernel"], 0.0)
  assert float(jnp.abs(upd["vae"]["conv"]["kernel"]).min()) > 0  # not frozen: Adam moves it
  assert optim.frozen_mask(params, ("^enc/",)) == {"vae": {"conv": {"kernel": False}},
                                                    "enc": {"kernel": True}}


def test_frozen_patterns_keep_no_moments_clip_only_trainable_and_must_match():
  params = {"enc": {"kernel": jnp.ones((2, 2))}, "dec": {"kernel": jnp.ones((2, 2))}}
  tx = optim.make_optimizer(base_lr=0.1, total_steps=10, weight_decay=0.0, grad_clip=1.0,
                            frozen_patterns=("^enc/",))
  state = tx.init(params)
  # No Adam moments for the frozen parameter: optax MaskedNode (no leaves), the trainable one has both.
  leaves = jax.tree_util.tree_flatten_with_path(state)[0]
  names = [optim.path_to_str(p) for p, _ in leaves]
  assert not [n for n in names if "enc" in n]
  assert len([n for n in names if "dec" in n]) == 2
  # A huge gradient on the frozen leaf must not shrink the trainable update through the global clip:
  # the trainable gradient (norm 0.2 < 1) passes unclipped, so Adam's first update is -lr * sign.
  grads = {"enc": {"kernel": 1e6 * jnp.ones((2, 2))}, "dec": {"kernel": 0.1 * jnp.ones((2, 2))}}
  upd, _ = tx.update(grads, state, params)
  np.testing.assert_array_equal(upd["enc"]["kernel"], 0.0)
  reference = optim.make_optimizer(base_lr=0.1, total_steps=10, weight_decay=0.0, grad_clip=1.0)
  ref, _ = reference.update({"dec": grads["dec"]}, reference.init({"dec": params["dec"]}),
                            {"dec": params["dec"]})
  np.testing.assert_array_equal(upd["dec"]["kernel"], ref["dec"]["kernel"])


def test_a_frozen_pattern_that_matches_nothing_is_an_error():
  params = {"enc": {"kernel": jnp.ones((2, 2))}, "dec": {"kernel": jnp.ones((2, 2))}}
  tx = optim.make_optimizer(base_lr=0.1, total_steps=10, frozen_patterns=("^enc/", "^encoder/"))
  with pytest.raises(ValueError, match=r"frozen_patterns \['\^encoder/'\] match no parameter path.*"
                                       r"'dec/kernel'"):
    tx.init(params)
  with pytest.raises(ValueError, match=r"frozen_patterns entries must be regular expressions, got '\('"):
    optim.make_optimizer(base_lr=0.1, total_steps=10, frozen_patterns=("(",))
