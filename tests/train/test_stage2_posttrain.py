"""TiTok two-stage training and decoder post-training: warm start (`config.init_from`), frozen
encoder/quantizer, resume priority, and the RobusTok perturbation applied during post-training.

One tiny stage-1 run feeds a tiny stage-2 run (3 real steps, the GAN active on the last); the stage-2
workdir is then resumed from a copy and post-trained. Everything runs on CPU in a few minutes.
"""
import hashlib
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtok.configs import titok
from jaxtok.tokenizers import api as tok_api
from jaxtok.train import checkpoint as ckpt_lib
from jaxtok.train import loop
from jaxtok.train import optim
from jaxtok.train import warm_start

FROZEN = ("encoder/", "latent_tokens", "codebook")


def _tree_hash(root):
  """sha256 over every file's relative path, bytes and mode under `root` (and the directory list)."""
  h = hashlib.sha256()
  for d, dirs, files in sorted(os.walk(root)):
    dirs.sort()
    h.update(os.path.relpath(d, root).encode())
    for f in sorted(files):
      p = os.path.join(d, f)
      h.update(f.encode())
      h.update(oct(os.stat(p).st_mode).encode())
      with open(p, "rb") as fh:
        h.update(fh.read())
  return h.hexdigest()


def _flat(params):
  return {optim.path_to_str(p): np.asarray(v) for p, v in
          jax.tree_util.tree_flatten_with_path(jax.device_get(params))[0]}


def _weights(path, config, *, use_ema):
  tok = tok_api.build(config.model)
  params, _ = ckpt_lib.load_params(path, tok.abstract_params(), use_ema=use_ema)
  return _flat(params)


def _random_params(model_cfg, seed):
  """Random weights shaped like the model's (no init compile: tests only compare and move them)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda a: jnp.asarray(rng.standard_normal(a.shape), a.dtype),
                      tok_api.build(model_cfg).abstract_params())


def _stage2_config(init_path, steps=3):
  c = titok.get_config("tiny,recipe=two_stage,stage=2")
  c.total_steps = steps
  c.final_eval = False
  c.init_from.path = init_path
  return c


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """stage 1 -> stage 2 (3 steps) from a copy of it; returns their paths and configs. The stage-1
  run is a training checkpoint of random weights (stage 2 only warm-starts from its weights;
  compiling two stage-1 steps cost ~20 s)."""
  from tests.tools.conftest import random_tokenizer_run
  root = tmp_path_factory.mktemp("two_stage")
  s1 = titok.get_config("tiny,recipe=two_stage")
  s1.final_eval = False
  s1_dir, _ = random_tokenizer_run(tmp_path_factory, s1, "s1", ema=True)
  source = str(root / "s1_copy")  # stage 2 reads this copy; the resume test deletes it later
  shutil.copytree(s1_dir, source)
  before = _tree_hash(source)
  c2 = _stage2_config(source)
  report = loop.train(c2, str(root / "s2"), show_progress=False)
  return dict(root=root, s1=s1, source=source, source_hash_before=before,
              source_hash_after=_tree_hash(source), c2=c2, report=report)


@pytest.mark.slow
def test_stage2_freezes_encoder_and_quantizer_and_trains_the_decoder(runs):
  # The source checkpoint is read, never touched.
  assert runs["source_hash_after"] == runs["source_hash_before"]
  start = _weights(runs["source"], runs["s1"], use_ema=True)  # init_from.use_ema: what stage 2 loaded
  end = _weights(str(runs["root"] / "s2"), runs["c2"], use_ema=False)
  end_ema = _weights(str(runs["root"] / "s2"), runs["c2"], use_ema=True)
  assert set(start) == set(end)
  frozen = [k for k in start if k.startswith(FROZEN)]
  trainable = [k for k in start if not k.startswith(FROZEN)]
  assert any(k.startswith("encoder/") for k in frozen) and "latent_tokens" in frozen
  assert "codebook" in frozen
  assert any(k.startswith("pixel_decoder/") for k in trainable) and "pixel_codebook" in trainable
  for k in frozen:  # bitwise, in the raw and in the EMA weights
    assert np.array_equal(start[k], end[k]), k
    assert np.array_equal(start[k], end_ema[k]), k
  changed = [k for k in trainable if not np.array_equal(start[k], end[k])]
  assert changed == trainable, sorted(set(trainable) - set(changed))
  # Stage-2 losses: pixels (l2) and the GAN from step 2, no proxy CE, no quantizer terms.
  lines = [json.loads(l) for l in open(runs["root"] / "s2" / "tb" / "metrics.jsonl")]
  assert [l["step"] for l in lines] == [1, 2, 3]
  assert all("loss/l2" in l and "loss/proxy_ce" not in l for l in lines)
  assert not any(k.startswith("loss/model/") for l in lines for k in l)
  assert lines[-1]["disc/active"] == 1.0 and lines[-1]["loss/gan_g"] != 0.0
  # No Adam moments are kept for frozen parameters (optax multi_transform: MaskedNode).
  ckpt = ckpt_lib.Checkpointer(str(runs["root"] / "s2" / "checkpoints"), read_only=True)
  sig = ckpt.state_signature(3)
  moments = [k for k in sig if k.startswith("opt_state.") and (".mu." in k or ".nu." in k)]
  assert moments and not [k for k in moments if ".encoder." in k or k.endswith(".latent_tokens")]
  assert [k for k in moments if ".decoder." in k]


@pytest.mark.slow
def test_stage2_resume_takes_priority_over_init_from(runs):
  # A copy of the stage-2 workdir stopped after its step-2 checkpoint, with init_from's source gone:
  # the resumed run must not read init_from and must end bitwise where the uninterrupted run ended.
  resumed = runs["root"] / "s2_resumed"
  shutil.copytree(runs["root"] / "s2", resumed)
  shutil.rmtree(resumed / "checkpoints" / "3")
  for f in ("final.json",):
    os.remove(resumed / f)
  shutil.rmtree(runs["source"])
  report = loop.train(_stage2_config(runs["source"]), str(resumed), show_progress=False)
  assert report["step"] == 3
  assert report["params_sha256"] == runs["report"]["params_sha256"]


def test_init_from_refuses_a_mismatching_model_and_leaves_the_source_alone(tmp_path):
  # A stage-1 checkpoint whose weights are those of a different (wider) decoder.
  wide = titok.get_config("tiny,recipe=two_stage")
  wide.model.decoder_width = 48
  src = str(tmp_path / "params")
  ckpt_lib.save_params(src, _random_params(wide.model, 0))
  before = _tree_hash(src)
  c = _stage2_config(src)
  with pytest.raises(ckpt_lib.CheckpointMismatchError, match=r"decoder\.[a-z_.]*.*\(48"):
    loop.train(c, str(tmp_path / "s2"), show_progress=False)
  assert _tree_hash(src) == before
  assert not os.path.exists(tmp_path / "s2" / "checkpoints" / "1")


def test_init_from_settings_validate():
  assert warm_start.settings(None) is None
  assert warm_start.settings({"path": ""}) is None
  assert warm_start.settings("runs/s1") == {"path": "runs/s1", "step": -1, "use_ema": True,
                                            "pixel_decoder": ""}
  with pytest.raises(ValueError, match=r"unknown fields \['paht'\]"):
    warm_start.settings({"paht": "x"})
  with pytest.raises(ValueError, match=r"init_from.step must be -1 .* got -2"):
    warm_start.settings({"path": "x", "step": -2})
  with pytest.raises(TypeError, match=r"init_from.use_ema must be a bool, got 'yes'"):
    warm_start.settings({"path": "x", "use_ema": "yes"})
  with pytest.raises(ValueError, match=r"pixel_decoder needs config.init_from.path"):
    warm_start.settings({"path": "", "pixel_decoder": "vqgan"})


def test_frozen_patterns_without_init_from_are_refused(tmp_path):
  c = _stage2_config("")
  with pytest.raises(ValueError, match=r"frozen_patterns .* would freeze randomly initialised"):
    loop.train(c, str(tmp_path / "s2"), show_progress=False)


def test_init_from_step_names_the_existing_steps(tmp_path):
  root = tmp_path / "ckpts"
  (root / "4" / "state").mkdir(parents=True)
  assert warm_start.source_path(str(root), -1) == str(root)
  assert warm_start.source_path(str(root), 4) == str(root / "4")
  with pytest.raises(FileNotFoundError, match=r"step=7: no such step .* steps \[4\]"):
    warm_start.source_path(str(root), 7)


def test_graft_pixel_decoder_maps_the_vqgan_decoder_and_codebook():
  c = titok.get_config("tiny,recipe=two_stage,stage=2")
  params = _random_params(c.model, 0)
  vqgan = _random_params(c.teacher.model, 1)
  out = warm_start.graft_pixel_decoder(params, vqgan)
  a, v, o = _flat(params), _flat(vqgan), _flat(out)
  for k in a:
    if k.startswith("pixel_decoder/"):
      np.testing.assert_array_equal(o[k], v["decoder/" + k[len("pixel_decoder/"):]])
    elif k == "pixel_codebook":
      np.testing.assert_array_equal(o[k], v["codebook"])
    else:
      np.testing.assert_array_equal(o[k], a[k])
  wrong = titok.get_config("tiny,recipe=two_stage").teacher.model
  wrong.z_channels = 4
  bad = jax.eval_shape(tok_api.build(wrong).init, jax.random.key(1))
  with pytest.raises(ckpt_lib.CheckpointMismatchError, match=r"pixel_codebook"):
    warm_start.graft_pixel_decoder(params, bad)


# ---- decoder post-training (RobusTok)


def _capture_decoded_codes(monkeypatch):
  """Records the codes every TiTok.decode_codes call receives (the decoder's token input)."""
  from jaxtok.tokenizers import titok as titok_lib
  seen = []
  original = titok_lib.TiTok.decode_codes

  def spy(self, codes, **kw):
    seen.append(np.asarray(codes))
    return original(self, codes, **kw)

  monkeypatch.setattr(titok_lib.TiTok, "decode_codes", spy)
  return seen


def test_posttrain_perturbs_the_decoder_input_on_a_hand_checkable_case(monkeypatch):
  from flax import nnx
  c = titok.get_config("tiny,stage=posttrain")
  assert dict(c.loss.perturb) == {"alpha": 0.3, "beta": 1.0, "delta": 8}
  tok = tok_api.build(c.model)
  model = nnx.merge(tok.graphdef, tok.init(jax.random.key(0)))
  images = jax.random.uniform(jax.random.key(1), (4, 16, 16, 3))
  clean = np.asarray(model.encode(images).codes)
  seen = _capture_decoded_codes(monkeypatch)
  # alpha 1, delta 2, beta 0.5: images 0-1 have every token redrawn from its 2 nearest codes (so
  # about half change), images 2-3 decode their clean codes exactly.
  out = model.train_forward(images, rng=jax.random.key(2), step=0,
                            perturb={"alpha": 1.0, "beta": 0.5, "delta": 2})
  got = seen[-1]
  np.testing.assert_array_equal(got[2:], clean[2:])
  differs = np.any(got[:2] != clean[:2], axis=-1)  # [2, K]
  assert 0 < differs.sum() < differs.size
  assert float(out.metrics["perturb/change_rate"]) == pytest.approx(differs.sum() / clean[:, :, 0].size)
  # A changed token decodes a codebook entry (l2-normalised, use_l2_norm): its second-nearest code.
  book = np.asarray(model.codebook.get_value())
  book = book / np.linalg.norm(book, axis=-1, keepdims=True)
  for b, k in zip(*np.nonzero(differs)):
    assert np.min(np.abs(book - got[b, k]).max(-1)) < 1e-5
  # The configured post-training rate: alpha (delta - 1) / delta of the tokens of every image.
  images = jax.random.uniform(jax.random.key(3), (64, 16, 16, 3))
  clean = np.asarray(model.encode(images).codes)
  out = model.train_forward(images, rng=jax.random.key(4), step=0, perturb=dict(c.loss.perturb))
  rate = np.mean(np.any(seen[-1] != clean, axis=-1))
  assert rate == pytest.approx(0.3 * 7 / 8, abs=0.08)
  assert float(out.metrics["perturb/change_rate"]) == pytest.approx(rate)


@pytest.mark.slow
def test_posttrain_runs_from_the_stage2_run(runs):
  c = titok.get_config("tiny,recipe=two_stage,stage=posttrain")
  c.total_steps = 2
  c.final_eval = False
  c.init_from.path = str(runs["root"] / "s2")
  before = _tree_hash(runs["root"] / "s2")
  loop.train(c, str(runs["root"] / "post"), show_progress=False)
  assert _tree_hash(runs["root"] / "s2") == before
  start = _weights(str(runs["root"] / "s2"), runs["c2"], use_ema=True)
  end = _weights(str(runs["root"] / "post"), c, use_ema=False)
  for k in start:
    if k.startswith(FROZEN):
      assert np.array_equal(start[k], end[k]), k
  assert any(not np.array_equal(start[k], end[k]) for k in start if k.startswith("decoder/"))
  lines = [json.loads(l) for l in open(runs["root"] / "post" / "tb" / "metrics.jsonl")]
  assert all(0 < l["model/perturb/change_rate"] < 0.5 for l in lines)
