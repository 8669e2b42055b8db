"""RobusTok generator-sampled post-training (`jaxtok.train.posttrain`, configs/titok.py
stage=posttrain,post=generated): teacher-forced tokens from a frozen causal generator replace the
encoder's tokens before decoding; encoder, latent tokens and codebook stay bitwise frozen."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtok.configs import gpt_flextok, titok
from jaxtok.samplers import autoregressive
from jaxtok.tokenizers import api as tok_api
from jaxtok.tokenizers import bottleneck as bottleneck_lib
from jaxtok.train import checkpoint as ckpt_lib
from jaxtok.train import generator, loop, posttrain
from jaxtok.train import state as state_lib
from tests.tools.conftest import random_like, save_train_checkpoint
from tests.train.test_stage2_posttrain import FROZEN, _capture_decoded_codes, _random_params, _weights


def _generator_run(workdir, *, codebook=64, tokens=8, seed=1):
  """A tiny GPT run (random weights, scale 0.5 so its draws are far from uniform) as
  tools/train_generator.py would leave it."""
  config = gpt_flextok.get_config(f"tiny,codebook={codebook},tokens={tokens}")
  _, _, init_fn, _ = generator.build(config, int(config.total_steps))
  abstract, _ = state_lib.abstract_train_state(init_fn, jax.random.key(0),
                                               state_lib.mesh_from_config(config),
                                               state_lib.rules_from_config(config))
  save_train_checkpoint(workdir, random_like(abstract, seed=seed, scale=0.5), config)
  return config


@pytest.fixture(scope="module")
def gen_dir(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("gpt_run"))
  _generator_run(workdir)
  return workdir


def test_settings_validate():
  assert posttrain.settings(None) is None
  with pytest.raises(ValueError, match=r"posttrain.generator must be the workdir .* got ''"):
    posttrain.settings({"generator": ""})
  with pytest.raises(ValueError, match=r"unknown fields \['sigm'\]"):
    posttrain.settings({"generator": "x", "sigm": 0.5})
  with pytest.raises(ValueError, match=r"sigma must lie in \[0, 1\], got 1.5"):
    posttrain.settings({"generator": "x", "sigma": 1.5})
  with pytest.raises(ValueError, match="cfg_schedule must be one of"):
    posttrain.settings({"generator": "x", "cfg_schedule": "cosine-ish"})
  c = titok.get_config("tiny,stage=posttrain,post=generated")
  assert "perturb" not in c.loss and posttrain.settings(dict(c.posttrain, generator="g"))["sigma"] == 0.7
  with pytest.raises(ValueError, match="post=generated selects the post-training variant: it needs stage=posttrain"):
    titok.get_config("tiny,post=generated")


def test_resample_keeps_sigma_and_draws_the_generator_chain(gen_dir):
  cfg = posttrain.settings({"generator": gen_dir, "temperature": 0.0, "sigma": 0.0})
  resample, params = posttrain.load(cfg, codebook_size=64, num_tokens=8)
  gt = jax.random.randint(jax.random.key(0), (64, 8), 0, 64)
  # sigma 0, greedy: exactly the generator's own greedy sequence, whatever the ground truth.
  out, m = jax.jit(resample)(params, gt, None, jax.random.key(1))
  gcfg, graphdef, p2 = posttrain._load(gen_dir, True)
  model = nnx.merge(graphdef, p2)
  prompt = model.condition_ids(None, 64)[:, None]
  free = autoregressive.sample(jax.random.key(2), model.prefill, model.step, model.init_cache(64),
                               prompt, num_tokens=8, temperature=0.0)
  np.testing.assert_array_equal(out, free)
  assert float(m["posttrain/changed"]) == pytest.approx(float(np.mean(np.asarray(out) != np.asarray(gt))))
  # sigma 1: the ground truth unchanged.
  keep_all, _ = posttrain.make_resample_fn(graphdef, dict(cfg, sigma=1.0))(params, gt, None, jax.random.key(1))
  np.testing.assert_array_equal(keep_all, gt)
  # sigma 0.7 at temperature 1: about 70% of positions hold the ground truth (more: a draw may
  # coincide with it), and every token is a valid id.
  mixed, m = jax.jit(posttrain.make_resample_fn(graphdef, dict(cfg, sigma=0.7, temperature=1.0)))(
      params, gt, None, jax.random.key(3))
  same = float(np.mean(np.asarray(mixed) == np.asarray(gt)))
  assert 0.6 < same < 0.85, same
  assert float(m["posttrain/changed"]) == pytest.approx(1 - same)
  assert 0 <= int(mixed.min()) and int(mixed.max()) < 64


def test_load_refuses_a_mismatching_generator(gen_dir, tmp_path):
  cfg = posttrain.settings({"generator": gen_dir})
  with pytest.raises(ValueError, match="models 64 codes, the tokenizer has codebook_size 4096"):
    posttrain.load(cfg, codebook_size=4096, num_tokens=8)
  with pytest.raises(ValueError, match="has seq_len 8, the tokenizer makes 32 tokens"):
    posttrain.load(cfg, codebook_size=64, num_tokens=32)
  with pytest.raises(FileNotFoundError):
    posttrain.load(posttrain.settings({"generator": str(tmp_path / "none")}), codebook_size=64, num_tokens=8)


def test_train_forward_decodes_the_resampled_codes(monkeypatch):
  c = titok.get_config("tiny,stage=posttrain,post=generated")
  tok = tok_api.build(c.model)
  model = nnx.merge(tok.graphdef, tok.init(jax.random.key(0)))
  images = jax.random.uniform(jax.random.key(1), (4, 16, 16, 3))
  enc = model.encode(images)
  seen = _capture_decoded_codes(monkeypatch)
  # A resampler that shifts the ids of image 0 by one: image 0 decodes codebook rows id+1, the others
  # their encoder codes unchanged.
  shift = lambda tok_, key: (tok_.at[0].set((tok_[0] + 1) % 64), {"posttrain/changed": jnp.float32(0.25)})
  out = model.train_forward(images, rng=jax.random.key(2), step=0, num_tokens=8, resample=shift)
  got = seen[-1]
  np.testing.assert_array_equal(got[1:], np.asarray(enc.codes)[1:])
  want0 = model.bottleneck.indices_to_codes(bottleneck_lib.read(model, model.bottleneck),
                                            (enc.tokens[:1] + 1) % 64)
  np.testing.assert_allclose(got[:1], want0, atol=1e-6)
  assert float(out.metrics["posttrain/changed"]) == 0.25
  with pytest.raises(ValueError, match="needs one id per token .* perturb set"):
    model.train_forward(images, rng=jax.random.key(2), step=0, resample=shift,
                        perturb={"alpha": 0.3, "beta": 1.0, "delta": 2})


@pytest.mark.slow
def test_posttrain_generated_trains_the_decoder_only(gen_dir, tmp_path):
  c = titok.get_config("tiny,stage=posttrain,post=generated")
  src = str(tmp_path / "tok_params")
  ckpt_lib.save_params(src, _random_params(c.model, 0))
  c.total_steps = 2
  c.final_eval = False
  c.init_from.path = src
  c.posttrain.generator = gen_dir
  loop.train(c, str(tmp_path / "post"), show_progress=False)
  start = _weights(src, c, use_ema=True)
  end = _weights(str(tmp_path / "post"), c, use_ema=False)
  for k in start:
    if k.startswith(FROZEN):
      assert np.array_equal(start[k], end[k]), k
  assert any(not np.array_equal(start[k], end[k]) for k in start if k.startswith("decoder/"))
  lines = [json.loads(l) for l in open(tmp_path / "post" / "tb" / "metrics.jsonl")]
  assert [l["step"] for l in lines] == [1, 2]
  # ~30% of tokens redrawn (a redraw may equal the ground truth): the changed share is well inside.
  assert all(0.05 < l["model/posttrain/changed"] < 0.5 for l in lines), lines
  assert not any(k.startswith("model/perturb/") for l in lines for k in l)
