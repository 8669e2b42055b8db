"""REPA in the train step: a tiny FlexTok (REPA) and a tiny TiTok (GigaTok's semantic regularisation)
with a projector train a few steps against the tiny official DINOv2 fixture; the REPA term is reported, DINOv2 stays bitwise unchanged, and the REPA
gradient reaches the projector and the decoder blocks up to repa_layer (and no later one)."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtok import sharding as shd
from jaxtok.configs import common
from jaxtok.losses import repa
from jaxtok.tokenizers import api as tok_api
from jaxtok.train import optim
from jaxtok.train import state as state_lib
from jaxtok.train import step as step_lib

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "fixtures", "official", "dinov2_tiny.safetensors")


def _config(name="flextok"):
  import importlib  # pylint: disable=g-import-not-at-top
  c = importlib.import_module(f"configs.{name}").get_config("tiny")
  if name == "titok":
    c.model.decoder_depth = 2  # so that a block after repa_layer exists
  common.add_repa(c, weights=FIXTURE, layer=1, dim=32, hidden=16, prefix="reg.")
  c.repa.dinov2 = {"num_heads": 2}  # the fixture's width 32 is no released size
  return c


# (the decoder's blocks, the pixel head) in each model's parameter tree
_PARTS = {
    "flextok": lambda g: (g["decoder"]["blocks"], g["dec_head"]),
    "titok": lambda g: (g["decoder"]["transformer"]["blocks"], g["decoder"]["ffn"]),
}


@pytest.mark.parametrize("name", ["flextok", "titok"])
def test_trains_with_repa_and_dinov2_stays_frozen(name):
  c = _config(name)
  tok = tok_api.build(c.model)
  model = state_lib.ModelDef(tok.graphdef, tok.init)
  mesh = shd.make_mesh((("data", 8), ("fsdp", 1), ("tensor", 1)))
  tx = optim.make_optimizer(base_lr=1e-3, total_steps=10)
  init_fn = state_lib.make_init_fn(model, tx)
  state, shardings, _ = state_lib.init_train_state(init_fn, jax.random.key(0), mesh, shd.DEFAULT_RULES)
  fn, dino, _ = repa.load_teacher(repa.settings(c.repa))
  before = jax.tree.map(np.array, dino)
  step = step_lib.make_train_step(model, c.loss, tx, state_shardings=shardings, repa=c.repa,
                                  repa_fn=fn, frozen={"repa": dino})
  images = jax.device_put(jax.random.uniform(jax.random.key(1), (8, 16, 16, 3)),
                          shd.batch_sharding(mesh, 4))
  p0 = jax.tree.map(np.array, state["params"])
  for _ in range(2):
    state, m = step(state, images, jax.random.key(2))
  m = jax.device_get(m)
  assert np.isfinite(m["loss"]) and -0.5 <= m["loss/repa"] <= 0.5  # weight 0.5 * [-1, 1]
  others = sum(v for k, v in m.items() if k.startswith("loss/") and k != "loss/repa")
  assert m["loss"] == pytest.approx(m["loss/repa"] + others, rel=1e-5)
  for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(dino)):
    np.testing.assert_array_equal(a, np.asarray(b))
  p1 = state["params"]
  assert not np.allclose(p0["repa_proj"]["fc1"]["kernel"], p1["repa_proj"]["fc1"]["kernel"])

  # The REPA term alone: its gradient reaches the projector and decoder block 0 (repa_layer 1),
  # not block 1 nor the output head.
  def repa_only(params):
    mod = nnx.merge(model.graphdef, params)
    out = mod.train_forward(images, rng=jax.random.key(3), features=True)
    assert out.features.shape == (8, 16, 32)  # the 4 x 4 patch grid
    return repa.alignment_loss(out.features, fn(dino, images, 4))

  g = jax.device_get(jax.jit(jax.grad(repa_only))(state["params"]))
  norm = lambda tree: float(sum(np.abs(x).sum() for x in jax.tree.leaves(tree)))
  blocks, head = _PARTS[name](g)
  assert norm(g["repa_proj"]) > 0 and norm(blocks[0]) > 0
  assert norm(blocks[1]) == 0 and norm(head) == 0


def test_repa_misconfigurations_are_refused():
  c = _config()
  tok = tok_api.build(dict(c.model, repa_layer=0))
  model = state_lib.ModelDef(tok.graphdef, tok.init)
  mesh = shd.make_mesh((("data", 8), ("fsdp", 1), ("tensor", 1)))
  tx = optim.make_optimizer(base_lr=1e-3, total_steps=10)
  with pytest.raises(ValueError, match="needs the frozen DINOv2"):
    step_lib.make_train_step(model, c.loss, tx, state_shardings=None, repa=c.repa)
  with pytest.raises(ValueError, match="needs config.repa.weights"):
    step_lib.make_train_step(model, c.loss, tx, state_shardings=None, repa={"weight": 0.5})
  with pytest.raises(ValueError, match=r"repa_layer must be an int in \[0, 2\]"):
    tok_api.build(dict(c.model, repa_layer=3))
  # A model built without a projector cannot return features.
  state, shardings, _ = state_lib.init_train_state(state_lib.make_init_fn(model, tx),
                                                   jax.random.key(0), mesh, shd.DEFAULT_RULES)
  fn, dino, _ = repa.load_teacher(repa.settings(c.repa))
  step = step_lib.make_train_step(model, c.loss, tx, state_shardings=shardings, repa=c.repa,
                                  repa_fn=fn, frozen={"repa": dino})
  with pytest.raises(ValueError, match="needs a REPA projector"):
    step(state, jnp.zeros((8, 16, 16, 3)), jax.random.key(0))


@pytest.mark.slow
def test_loop_trains_flextok_with_config_repa(tmp_path):
  """config.repa through loop.train: the DINOv2 file is read by the loop, loss/repa is logged."""
  import json  # pylint: disable=g-import-not-at-top
  from jaxtok.train import loop  # pylint: disable=g-import-not-at-top
  c = _config()
  c.total_steps, c.final_eval, c.ckpt_every, c.eval_every = 2, False, 2, 2
  report = loop.train(c, str(tmp_path / "run"), show_progress=False)
  assert report["step"] == 2
  lines = [json.loads(l) for l in open(tmp_path / "run" / "tb" / "metrics.jsonl")]
  assert all(np.isfinite(l["loss/repa"]) for l in lines) and len(lines) == 2
  c.repa.weights = ""
  with pytest.raises(ValueError, match="needs config.repa.weights"):
    loop.train(c, str(tmp_path / "run2"), show_progress=False)
