"""The jitted train step: sharded (8 fake devices) equals single-device, one trace, PatchGAN +
perceptual terms with the discriminator frozen before its start step, RobusTok perturbation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxtok import sharding as shd
from jaxtok.losses import perceptual
from jaxtok.nn import discriminator as disc_lib
from jaxtok.tokenizers.api import TrainOutput
from jaxtok.train import optim
from jaxtok.train import state as state_lib
from jaxtok.train import step as step_lib


class TinyAE(nnx.Module):
  """A 2-layer patch autoencoder with a latent-token parameter and a non-parameter counter."""

  def __init__(self, *, rngs):
    init = nnx.initializers.lecun_normal()
    self.enc = nnx.Linear(12, 16, kernel_init=shd.logical_init(init, "patch", "embed"), rngs=rngs)
    self.dec = nnx.Linear(16, 12, kernel_init=shd.logical_init(init, "embed", "patch"), rngs=rngs)
    self.latent_tokens = nnx.Param(jnp.ones((4, 16)) * 0.01)
    self.norm = nnx.LayerNorm(16, rngs=rngs)
    self.calls = nnx.Variable(jnp.zeros((), jnp.int32))

  def train_forward(self, images, *, rng, step=None, target="pixels", perturb=None, num_tokens=None):
    assert target == "pixels" and perturb is None and num_tokens is None
    b, h, w, c = images.shape
    x = images.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, -1, 12)
    z = self.norm(self.enc(x)) + self.latent_tokens[...].mean(0)
    noise = 0.01 * jax.random.normal(rng, z.shape)
    y = self.dec(z + noise)
    recon = y.reshape(b, h // 2, w // 2, 2, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)
    self.calls[...] = self.calls[...] + 1
    return TrainOutput(recon, {"reg": 0.1 * jnp.mean(jnp.square(z))}, {"zmean": jnp.mean(z)})


# A PatchGAN small enough for 16x16 images: 16 -> 8 -> 4 (stride 2) -> 3 -> 2 (stride 1).
DISC = {"channels": 4, "num_layers": 2, "num_groups": 2}


def lpips_file(tmp_path):
  """A narrow LPIPS-VGG16-layout network (2 channels everywhere), saved as safetensors."""
  rng, sd, cin = np.random.default_rng(0), {}, 3
  for k, convs in enumerate(perceptual.VGG16_SLICES):
    for i in convs:
      sd[f"features.{i}.weight"] = rng.normal(0.0, 0.4, (2, cin, 3, 3)).astype(np.float32)
      sd[f"features.{i}.bias"] = np.full((2,), 0.05, np.float32)
      cin = 2
    sd[f"lin{k}.model.1.weight"] = np.ones((1, 2, 1, 1), np.float32)
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  save_file(sd, str(tmp_path / "lpips.safetensors"))
  return str(tmp_path / "lpips.safetensors")


def numpy_state(init_fn, mesh, seed=0):
  """A TrainState with the shapes and shardings of init_fn's, parameters drawn with numpy and every
  other leaf (step, optimizer moments, EMAs) zero: compiling the random initialisers of the
  networks costs tens of seconds on a busy 2-core CPU, and the steps under test do not need them."""
  abstract = jax.eval_shape(init_fn, jax.random.key(0))
  shardings = state_lib.shardings_of(abstract, mesh, shd.DEFAULT_RULES)
  rng = np.random.default_rng(seed)
  def value(path, a):
    if path[0].key in ("params", "disc_params") and jnp.issubdtype(a.dtype, jnp.floating):
      return (0.2 * rng.standard_normal(a.shape) / np.sqrt(max(a.shape[-1], 1))).astype(a.dtype)
    return np.zeros(a.shape, a.dtype)
  host = jax.tree_util.tree_map_with_path(value, abstract)
  return jax.device_put(host, shardings), shardings


def _setup(mesh, *, disc=False, ema=0.0, counter=None, weights_file=None, gan_start=1):
  model = state_lib.model_def(lambda rngs: TinyAE(rngs=rngs))
  tx = optim.make_optimizer(base_lr=1e-2, total_steps=10, warmup_steps=2, weight_decay=1e-2)
  d = state_lib.model_def(lambda rngs: disc_lib.make_discriminator(DISC, rngs=rngs)) if disc else None
  d_tx = optim.make_optimizer(base_lr=1e-2, total_steps=10) if disc else None
  init_fn = state_lib.make_init_fn(model, tx, ema=ema > 0, disc=d, disc_tx=d_tx)
  if disc:
    state, shardings = numpy_state(init_fn, mesh)
  else:
    state, shardings, _ = state_lib.init_train_state(init_fn, jax.random.key(0), mesh,
                                                     shd.DEFAULT_RULES)
  loss = {"l1": 1.0, "l2": 0.5, "gan": 0.1 if disc else 0.0, "gan_start": gan_start, "lecam": 0.01}
  frozen, perc_fn = {}, None
  if weights_file is not None:
    perc_fn, frozen["perceptual"] = perceptual.from_config({"perceptual_weights": weights_file})
    loss["perceptual"] = 0.5
  step = step_lib.make_train_step(model, loss, tx, state_shardings=shardings, ema_decay=ema, disc=d,
                                  disc_tx=d_tx, on_trace=counter, perceptual_fn=perc_fn,
                                  frozen=frozen,
                                  lr_schedule=optim.warmup_cosine(base_lr=1e-2, total_steps=10,
                                                                  warmup_steps=2))
  return state, step


def _batch(mesh, n=8, size=4):
  x = jax.random.uniform(jax.random.key(1), (n, size, size, 3))
  return jax.device_put(x, shd.batch_sharding(mesh, 4))


@pytest.mark.slow
def test_gan_perceptual_step_sharded_equals_single_device(tmp_path):
  """PatchGAN + LPIPS + LeCAM, 3 jitted steps with gan_start = disc_start = 2, on a 2x4 (data, fsdp)
  mesh and on one device: the discriminator waits for its start, then both networks update in the
  same step, and the two runs agree."""
  results = []
  weights = lpips_file(tmp_path)
  changed = lambda a, b: not all(jax.tree.leaves(jax.tree.map(np.array_equal, a, b)))
  for mesh in (shd.make_mesh((("data", 2), ("fsdp", 4), ("tensor", 1))),
               shd.make_mesh((("data", 1), ("fsdp", 1), ("tensor", 1)), jax.devices()[:1])):
    count = []
    state, step = _setup(mesh, disc=True, ema=0.9, weights_file=weights, gan_start=2,
                         counter=lambda: count.append(1))
    batch = _batch(mesh, size=16)
    keys = ("params", "disc_params", "lecam_state")
    history = [jax.device_get({k: state[k] for k in keys})]
    metrics = []
    for _ in range(3):
      state, m = step(state, batch, jax.random.key(3))
      history.append(jax.device_get({k: state[k] for k in keys}))
      metrics.append(jax.device_get(m))
    assert len(count) == 1
    # The tokenizer trains from step 1 on (the warmup's lr(0) is 0).
    assert changed(history[1]["params"], history[2]["params"])
    assert changed(history[2]["params"], history[3]["params"])
    # Steps 0 and 1 (< 2): discriminator and LeCAM EMAs untouched, no generator GAN term.
    for i in (0, 1):
      assert not changed(history[0]["disc_params"], history[i + 1]["disc_params"])
      assert not changed(history[0]["lecam_state"], history[i + 1]["lecam_state"])
      assert metrics[i]["disc/active"] == 0.0 and metrics[i]["loss/gan_g"] == 0.0
    # Step 2: both networks update in the same step; the generator's hinge term is on.
    assert changed(history[2]["disc_params"], history[3]["disc_params"])
    assert changed(history[2]["lecam_state"], history[3]["lecam_state"])
    assert metrics[2]["disc/active"] == 1.0 and metrics[2]["loss/gan_g"] != 0.0
    assert metrics[2]["disc/loss"] > 0 and metrics[2]["disc/grad_norm"] > 0
    assert all(m["loss/perceptual"] > 0 and np.isfinite(m["loss"]) for m in metrics)
    results.append((jax.device_get(state), metrics[-1], state))
  (s8, m8, sharded), (s1, m1, _) = results
  # FSDP: the embed axis of the encoder kernel is split over the 4 fsdp devices.
  assert sharded["params"]["enc"]["kernel"][...].sharding.spec == P(None, "fsdp")
  assert sharded["opt_state"][1][0].mu["enc"]["kernel"][...].sharding.spec == P(None, "fsdp")
  # The discriminator's output channels (conv_out) are split over fsdp too.
  assert sharded["disc_params"]["convs"][0]["kernel"][...].sharding.spec == P(None, None, None, "fsdp")
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), s8, s1)
  assert int(s8["step"]) == 3 and int(s8["model_state"]["calls"][...]) == 3
  for k in m8:
    np.testing.assert_allclose(m8[k], m1[k], rtol=1e-5, atol=1e-7)


def test_step_traces_once_and_changes_params():
  mesh = shd.make_mesh((("data", 8), ("fsdp", 1), ("tensor", 1)))
  count = []
  state, step = _setup(mesh, counter=lambda: count.append(1))
  before = jax.device_get(state["params"]["dec"]["kernel"][...])
  batch = _batch(mesh)
  for _ in range(3):
    state, metrics = step(state, batch, jax.random.key(3))
  assert len(count) == 1
  assert int(state["step"]) == 3
  assert not np.allclose(before, jax.device_get(state["params"]["dec"]["kernel"][...]))
  # lr at step 2 (the metrics of the 3rd step) is the peak of the warmup.
  np.testing.assert_allclose(float(metrics["lr"]), 1e-2, rtol=1e-6)
  assert np.isfinite(float(metrics["loss"]))


def test_bad_loss_config_raises():
  mesh = shd.make_mesh((("data", 8), ("fsdp", 1), ("tensor", 1)))
  model = state_lib.model_def(lambda rngs: TinyAE(rngs=rngs))
  tx = optim.make_optimizer(base_lr=1e-2, total_steps=10)
  with pytest.raises(ValueError, match="l1"):
    step_lib.make_train_step(model, {"l1": -1.0}, tx, state_shardings=None)
  with pytest.raises(ValueError, match="discriminator"):
    step_lib.make_train_step(model, {"gan": 0.1}, tx, state_shardings=None)
  with pytest.raises(ValueError, match="teacher"):
    step_lib.make_train_step(model, {"proxy": 1.0}, tx, state_shardings=None)
  with pytest.raises(ValueError, match="perceptual_weights"):
    step_lib.make_train_step(model, {"perceptual": 1.0}, tx, state_shardings=None)
  with pytest.raises(ValueError, match="gan_start and loss.disc_start must be >= 0"):
    step_lib.make_train_step(model, {"gan_start": -1}, tx, state_shardings=None)
  with pytest.raises(ValueError, match=r"unknown fields \['strength'\]"):
    step_lib.make_train_step(model, {"perturb": {"strength": 1}}, tx, state_shardings=None)
  with pytest.raises(ValueError, match="needs 'delta'"):
    step_lib.make_train_step(model, {"perturb": {"alpha": 0.5, "beta": 0.1}}, tx, state_shardings=None)
  with pytest.raises(ValueError, match="delta must be an int >= 1, got 0"):
    step_lib.make_train_step(model, {"perturb": {"alpha": 0.5, "beta": 0.1, "delta": 0}}, tx,
                             state_shardings=None)
  with pytest.raises(ValueError, match="anneal_end must be > anneal_start"):
    step_lib.make_train_step(model, {"perturb": {"alpha": 0.5, "beta": 0.1, "delta": 2,
                                                 "anneal_start": 5, "anneal_end": 5}}, tx,
                             state_shardings=None)
  assert step_lib.perturb_settings({}) is None and step_lib.perturb_settings(None) is None


def _tokenizer(config="titok", arg="tiny"):
  import importlib  # pylint: disable=g-import-not-at-top
  from jaxtok.tokenizers import api as tok_api  # pylint: disable=g-import-not-at-top
  cfg = importlib.import_module(f"configs.{config}").get_config(arg).model
  tok = tok_api.build(cfg)
  return state_lib.ModelDef(tok.graphdef, tok.init)


@pytest.mark.slow
def test_robustok_perturbation_in_the_step():
  model = _tokenizer()
  mesh = shd.make_mesh((("data", 8), ("fsdp", 1), ("tensor", 1)))
  tx = optim.make_optimizer(base_lr=1e-3, total_steps=10)
  state, shardings = numpy_state(state_lib.make_init_fn(model, tx), mesh)
  params = state["params"]
  images = _batch(mesh, size=16)

  @jax.jit
  def forwards(p, rng):
    m = nnx.merge(model.graphdef, p)
    plain = m.train_forward(images, rng=rng)
    none = m.train_forward(images, rng=rng, perturb={"alpha": 1.0, "beta": 0.0, "delta": 4})
    every = m.train_forward(images, rng=rng, perturb={"alpha": 1.0, "beta": 1.0, "delta": 4})
    return plain, none, every

  plain, none, every = jax.device_get(forwards(params, jax.random.key(3)))
  # beta = 0 perturbs no image: exactly the plain forward (VQ is deterministic).
  np.testing.assert_allclose(none.recon, plain.recon, rtol=1e-6, atol=1e-6)
  assert none.metrics["perturb/change_rate"] == 0.0
  # alpha = 1, delta = 4: every token draws one of its 4 nearest codes (3 in 4 change); the
  # quantizer losses are computed on the clean tokens, so they equal the plain ones.
  assert 0.55 < every.metrics["perturb/change_rate"] < 0.95
  assert not np.allclose(every.recon, plain.recon)
  for k, v in plain.losses.items():
    np.testing.assert_allclose(every.losses[k], v, rtol=1e-6)
  # Wired into the jitted step through loss.perturb (annealed on the step here).
  pert = {"alpha": 1.0, "beta": 0.5, "delta": 4, "anneal_start": 0, "anneal_end": 10, "end_ratio": 0.5}
  step = step_lib.make_train_step(model, {"l2": 1.0, "perturb": pert}, tx, state_shardings=shardings)
  _, m = step(state, images, jax.random.key(3))
  assert 0.0 < float(m["model/perturb/change_rate"]) < 0.5 and float(m["model/perturb/alpha"]) == 1.0
  assert np.isfinite(float(m["loss"]))


@pytest.mark.parametrize("config,arg", [("titok", "tiny,quantizer=fsq"), ("flextok", "tiny"),
                                        ("vqgan", "tiny")])
def test_robustok_runs_in_the_step_for_fsq_flextok_and_vqgan(config, arg):
  """loss.perturb reaches every discrete tokenizer through train_forward: tokens change, the losses
  are finite, and the step's rng stream is that of the plain step (same quantizer losses)."""
  model = _tokenizer(config, arg)
  mesh = shd.make_mesh((("data", 8), ("fsdp", 1), ("tensor", 1)))
  tx = optim.make_optimizer(base_lr=1e-3, total_steps=10)
  state, shardings = numpy_state(state_lib.make_init_fn(model, tx), mesh)
  images = _batch(mesh, size=16)  # every tiny config is 16x16.
  pert = {"alpha": 1.0, "beta": 1.0, "delta": 3}
  step = step_lib.make_train_step(model, {"l2": 1.0, "perturb": pert}, tx, state_shardings=shardings)
  _, m = step(state, images, jax.random.key(3))
  # alpha = 1, delta = 3: each token changes with probability 2/3.
  assert 0.3 < float(m["model/perturb/change_rate"]) <= 1.0
  assert float(m["model/perturb/alpha"]) == 1.0
  assert np.isfinite(float(m["loss"]))


def test_perturbation_needs_discrete_tokens():
  vae = _tokenizer("vae")
  m = nnx.merge(vae.graphdef, jax.eval_shape(vae.init, jax.random.key(0)))
  with pytest.raises(ValueError, match="discrete tokens"):
    m.train_forward(jnp.zeros((2, 16, 16, 3)), rng=jax.random.key(0),
                    perturb={"alpha": 1.0, "beta": 1.0, "delta": 2})
