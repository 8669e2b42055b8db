"""Every quantizer kind (and every VQ option) selectable in TiTok and the VQGAN: a tiny model trains
with the real jitted train step (loss falls, usage/perplexity reported, EMA state carried in
model_state), encode -> decode round-trips, out-of-range ids and bad token shapes are refused."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import Mesh

from jaxtok.tokenizers import bottleneck, titok, vqgan
from jaxtok.train import state as state_lib
from jaxtok.train import step as step_lib

TINY = dict(name="titok", image_size=16, patch_size=4, encoder_width=16, encoder_depth=1,
            encoder_heads=2, decoder_width=16, decoder_depth=1, decoder_heads=2,
            num_latent_tokens=4, token_size=4, codebook_size=16, use_l2_norm=False)
# name -> (config overrides, token shape after [B, K], ids per entry)
CASES = {
    "vq": (dict(quantizer="vq"), (), 16),
    "vq_cosine": (dict(quantizer="vq", use_l2_norm=True), (), 16),
    "vq_ema": (dict(quantizer="vq", quantizer_options=dict(ema=True, ema_decay=0.8)), (), 16),
    "vq_kmeans_init": (dict(quantizer="vq", quantizer_options=dict(ema=True, kmeans_init=True)),
                       (), 16),
    "vq_dead_code_restart": (dict(quantizer="vq", quantizer_options=dict(
        ema=True, ema_decay=0.8, dead_code_restart=True, dead_code_threshold=0.5)), (), 16),
    "vq_rotation_trick": (dict(quantizer="vq", quantizer_options=dict(rotation_trick=True)), (), 16),
    "vq_entropy": (dict(quantizer="vq", quantizer_options=dict(entropy_weight=0.01,
                                                              entropy_temperature=0.1)), (), 16),
    "fsq": (dict(quantizer="fsq", fsq_levels=(5, 5, 3, 3)), (), 225),
    "lfq": (dict(quantizer="lfq", quantizer_options=dict(entropy_weight=0.01)), (), 16),
    "bsq": (dict(quantizer="bsq", quantizer_options=dict(entropy_weight=0.01,
                                                        inv_temperature=10.0)), (), 16),
    "rvq": (dict(quantizer="rvq", quantizer_options=dict(num_quantizers=2)), (2,), 16),
    "rfsq": (dict(quantizer="rfsq", fsq_levels=(3, 3, 3, 3),
                  quantizer_options=dict(num_quantizers=2)), (2,), 81),
    "binary": (dict(quantizer="binary", quantizer_options=dict(aux_weight=0.01)), (), 16),
}
STEPS = 24


def _images(b=4, size=16):
  # Smooth colour ramps, so a tiny model can fit them within a few steps.
  t = np.linspace(0.0, 1.0, size, dtype=np.float32)
  phase = np.arange(b, dtype=np.float32)[:, None, None] / b
  r = 0.5 + 0.4 * np.sin(2 * np.pi * (t[None, :, None] + phase))
  g = np.broadcast_to(t[None, None, :], (b, size, size))
  bl = np.broadcast_to(phase, (b, size, size))
  return jnp.asarray(np.stack([np.broadcast_to(r, (b, size, size)), g, bl], -1))


def _numpy_init(make):
  """graphdef, params and non-parameter state of make(rngs) without running (or compiling) its
  initialisers, which costs tens of seconds on a busy 2-core CPU: parameters drawn with numpy (norm
  scales 1, biases 0), the bottleneck's own variables (EMA statistics) from `make_variables`."""
  abstract = nnx.eval_shape(lambda: make(nnx.Rngs(0)))
  graphdef, full = nnx.split(abstract)
  params, rest = state_lib.split_params(full)
  rng = np.random.default_rng(0)

  def param(path, a):
    name = str(getattr(path[-1], "key", path[-1]))
    if name == "scale":
      return np.ones(a.shape, a.dtype)
    if name == "bias":
      return np.zeros(a.shape, a.dtype)
    return (0.3 * rng.standard_normal(a.shape) / np.sqrt(max(a.shape[-1], 1))).astype(a.dtype)

  own = {k: np.asarray(v.get_value())
         for k, v in abstract.bottleneck.make_variables(nnx.Rngs(0)).items()}
  params = jax.tree_util.tree_map_with_path(param, params)
  rest = jax.tree_util.tree_map_with_path(lambda path, a: own[path[0].key], rest)
  return graphdef, params, rest


def _train(make, images, steps=STEPS):
  """(model after training, initial TrainState values, list of metric dicts): the real train step."""
  graphdef, params, rest = _numpy_init(make)
  tx = optax.adam(3e-3)
  state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}
  if jax.tree.leaves(rest):
    state["model_state"] = rest
  mesh = Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1, 1), ("data", "fsdp", "tensor"))
  shardings = state_lib.shardings_of(jax.eval_shape(lambda: state), mesh, ())
  init = jax.tree.map(np.asarray, state)
  train_step = step_lib.make_train_step(state_lib.ModelDef(graphdef, None), {"l2": 1.0}, tx,
                                        state_shardings=shardings)
  history = []
  state = jax.device_put(state, shardings)
  for _ in range(steps):
    state, metrics = train_step(state, images, jax.random.key(1))
    history.append(jax.device_get(metrics))
  parts = [state["params"]] + ([state["model_state"]] if "model_state" in state else [])
  return nnx.merge(graphdef, *parts), init, history


def _check_training(history):
  l2 = np.asarray([h["loss/l2"] for h in history])
  assert np.all(np.isfinite([h["loss"] for h in history]))
  assert l2[-4:].mean() < 0.8 * l2[:4].mean(), l2
  for key in ("model/usage", "model/perplexity"):
    assert key in history[-1] and np.isfinite(history[-1][key]), sorted(history[-1])
  assert 0.0 < history[-1]["model/usage"] <= 1.0


@functools.lru_cache(maxsize=None)
def _trained_titok(case):
  cfg = dict(TINY, **CASES[case][0])
  return _train(lambda rngs: titok.make_model(cfg, rngs=rngs), _images())


def _roundtrip(model, images):
  g, s = nnx.split(model)

  @jax.jit
  def f(s, x):
    m = nnx.merge(g, s)
    enc = m.encode(x)
    # The prefix decode must equal decoding the first two tokens of the full sequence.
    prefix = (m.decode(enc.tokens[:, :2]), m.decode_codes(enc.codes[:, :2])) if hasattr(
        m, "tail_drop") else None
    return enc, m.decode(enc.tokens), m.decode_codes(enc.codes), prefix

  return f(s, images)


@pytest.mark.parametrize("case", sorted(CASES))
def test_titok_trains_and_roundtrips(case):
  _, token_shape, ids = CASES[case]
  model, init, history = _trained_titok(case)
  _check_training(history)
  assert model.codebook_size == ids and model.bottleneck.token_shape == token_shape
  x = _images()
  enc, decoded, recon, prefix = _roundtrip(model, x)
  assert enc.tokens.shape == (4, 4) + token_shape and enc.tokens.dtype == jnp.int32
  assert int(enc.tokens.min()) >= 0 and int(enc.tokens.max()) < ids
  np.testing.assert_allclose(decoded, recon, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(*prefix, rtol=1e-5, atol=1e-5)
  bad = enc.tokens.at[0, 0].set(ids)
  with pytest.raises(ValueError, match=r"ids in \[0, %d\)" % ids):
    model.decode(bad)
  with pytest.raises(ValueError, match="ids in"):
    model.decode(enc.tokens.at[1, 1].set(-1))
  with pytest.raises(ValueError, match="tokens must have shape"):
    model.decode(enc.tokens[..., None] if not token_shape else enc.tokens[..., 0])


@pytest.mark.parametrize("case", ["vq_ema", "vq_kmeans_init", "vq_dead_code_restart"])
def test_vq_ema_state_is_carried_in_model_state(case):
  model, init, history = _trained_titok(case)
  assert "model_state" in init
  # The EMA codebook is state, not a parameter: it is not in params and the optimizer never sees it.
  assert "codebook" not in init["params"] and "codebook" in init["model_state"]
  assert isinstance(model.codebook, bottleneck.QuantizerState)
  before = init["model_state"]
  assert not np.allclose(model.codebook.get_value(), before["codebook"].get_value())
  assert not np.allclose(model.codebook_cluster_size.get_value(),
                         before["codebook_cluster_size"].get_value())
  assert bool(model.codebook_initialized.get_value())
  if case == "vq_kmeans_init":
    assert not bool(before["codebook_initialized"].get_value())
  if case == "vq_dead_code_restart":
    assert "model/dead_codes" in history[0]


def test_encode_leaves_the_ema_state_alone():
  model, _, _ = _trained_titok("vq_ema")
  cb = np.asarray(model.codebook.get_value())
  _roundtrip(model, _images())
  np.testing.assert_array_equal(model.codebook.get_value(), cb)


def test_perturbation_vq_fsq_only():
  m, _, _ = _trained_titok("lfq")
  with pytest.raises(ValueError, match="needs discrete tokens from quantizer 'vq' or 'fsq'"):
    m.train_forward(_images(2), rng=jax.random.key(0), perturb=dict(alpha=0.5, beta=0.5, delta=2))
  for kind, kw in (("rvq", dict(codebook_size=16)), ("binary", {}), ("bsq", {})):
    spec = bottleneck.Bottleneck.create(kind, 4, **kw)
    with pytest.raises(ValueError, match="defined for quantizer 'vq'"):
      spec.perturb({}, {}, None, None, None, None, None)


def test_bad_options_are_refused():
  with pytest.raises(ValueError, match=r"unknown quantizer_options \['ema'\] for quantizer 'fsq'"):
    titok.make_model(dict(TINY, quantizer="fsq", fsq_levels=(5, 5, 3, 3),
                          quantizer_options=dict(ema=True)), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="needs ema=True"):
    bottleneck.check_options("vq", dict(kmeans_init=True))
  with pytest.raises(ValueError, match=r"quantizer_options\['ema'\] must be bool"):
    bottleneck.check_options("vq", dict(ema=1))
  with pytest.raises(ValueError, match="quantizer must be one of"):
    titok.make_model(dict(TINY, quantizer="pq"), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="token dimension <= 31"):
    bottleneck.Bottleneck.create("lfq", 32)


def test_unpacked_binary_tokens_have_a_bit_axis():
  spec = bottleneck.Bottleneck.create("binary", 40)
  assert spec.token_shape == (40,) and spec.codebook_size == 2
  z = jax.random.normal(jax.random.key(0), (2, 3, 40))
  idx, codes, _, _ = spec.quantize({}, z, rng=None, train=False)
  assert idx.shape == (2, 3, 40)
  spec.check_tokens(idx, 3)
  np.testing.assert_array_equal(spec.indices_to_codes({}, idx), codes)


VQGAN_TINY = dict(name="vqgan", image_size=16, ch=8, ch_mult=(1, 2), num_res_blocks=1,
                  z_channels=4, codebook_size=16, num_groups=4)


@pytest.mark.parametrize("overrides,token_shape", [
    (dict(quantizer="fsq", fsq_levels=(5, 5, 3, 3)), ()),
    (dict(quantizer="rvq", quantizer_options=dict(num_quantizers=2)), (2,)),
])
def test_vqgan_other_quantizers(overrides, token_shape):
  cfg = dict(VQGAN_TINY, **overrides)
  model, _, history = _train(lambda rngs: vqgan.make_model(cfg, rngs=rngs), _images(), steps=20)
  _check_training(history)
  enc, decoded, recon, _ = _roundtrip(model, _images())
  assert enc.tokens.shape == (4, 64) + token_shape
  np.testing.assert_allclose(decoded, recon, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="ids in"):
    model.decode(enc.tokens.at[0, 0].set(model.codebook_size))


@pytest.mark.parametrize("name", ["titok", "onedpiece", "vqgan"])
def test_configs_accept_every_kind(name):
  import importlib  # pylint: disable=g-import-not-at-top
  from jaxtok.tokenizers import api  # pylint: disable=g-import-not-at-top
  module = importlib.import_module(f"configs.{name}")
  for kind in bottleneck.KINDS:
    c = module.get_config(f"quantizer={kind},tiny")
    tok = api.build(c.model)  # abstract: nothing is initialised
    assert tok.abstract_params() is not None
  with pytest.raises(ValueError, match="quantizer must be one of"):
    module.get_config("quantizer=pq,tiny")
