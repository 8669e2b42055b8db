"""Layton with a pretrained latent-diffusion VAE (`vae_checkpoint`): the tiny config built on the tiny
official diffusers VAE fixture (tests/fixtures/official/ldm_vae_tiny_*) starts from those weights
(also when the constructor runs under jit, as the trainer's initialiser does), its latents are the
official encoder's mean x scaling_factor, and a training step with configs/layton.py's AdamW leaves
the VAE bitwise unchanged while the rest of the model trains."""
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtok.configs import layton as layton_config
from jaxtok.convert import ldm_vae
from jaxtok.tokenizers import api, layton
from jaxtok.train import optim
from tests.tokenizers.fit import fixed_batch_losses

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "official")
# The fixture VAE's sizes as Layton fields.
VAE_FIELDS = dict(use_vae=True, vae_channels=(8, 16), vae_latent_channels=4, vae_layers_per_block=1,
                  vae_norm_groups=4, vae_mid_attention=True, vae_scaling_factor=0.18215)


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
  """The fixture as a diffusers model directory (what `vae_checkpoint` reads, like a converted one)."""
  d = tmp_path_factory.mktemp("layton_vae") / "vae"
  d.mkdir()
  shutil.copy(os.path.join(FIXTURES, "ldm_vae_tiny_diffusers.safetensors"),
              d / ldm_vae.DIFFUSERS_WEIGHTS)
  shutil.copy(os.path.join(FIXTURES, "ldm_vae_tiny_config.json"), d / "config.json")
  return str(d)


def _config(vae_dir, **over):
  c = layton_config.get_config(f"tiny,vae_checkpoint={vae_dir}")
  c.model.update(dict(VAE_FIELDS, **over))
  return c


def _flat(tree):
  return {".".join(map(str, p)): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(tree)}


@pytest.mark.slow  # one Layton train step through the VAE compiles for ~10 s
def test_frozen_pretrained_vae_loaded_under_jit_and_unchanged_by_training(vae_dir):
  c = _config(vae_dir)
  assert c.model.vae_checkpoint == vae_dir
  tok = api.build(c.model)
  _, want = ldm_vae.read_weights(vae_dir)
  # The constructor traced by jit (as the trainer's initialiser runs it) holds the checkpoint's VAE,
  # not a random one (only the VAE is returned: XLA drops the rest of the initialiser).
  vae = jax.jit(lambda: nnx.state(layton.make_model(c.model, rngs=nnx.Rngs(0)).vae, nnx.Param))()
  got = _flat(vae)
  assert got.keys() == want.keys()
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)

  # Random values for the rest (the initialiser's compile costs more than this test), that VAE.
  rs = np.random.default_rng(0)
  params = jax.tree.map(lambda a: jnp.asarray(0.1 * rs.normal(size=a.shape), a.dtype),
                        tok.abstract_params())
  params["vae"] = vae

  # Layton's latents are the official encoder's posterior mean times the scaling factor.
  io = np.load(os.path.join(FIXTURES, "ldm_vae_tiny_io.npz"))
  latents = jax.jit(lambda p, x: nnx.merge(tok.graphdef, p).images_to_latents(x))(
      params, jnp.asarray((io["x"] + 1.0) / 2.0))
  np.testing.assert_allclose(latents, io["mean"] * 0.18215, atol=1e-4)

  # Two steps of the config's AdamW (weight decay on, but not on ^vae/; no warmup so the first step
  # moves): l1 + the consistency loss. The VAE stays bitwise the checkpoint's; the rest moved.
  c.optim.warmup_steps = 0
  tx = optim.optimizer_from_config(c.optim, c.total_steps)
  # The config freezes ^vae/: AdamW keeps moments (mu, nu) for every other parameter only.
  size = lambda tree: sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree)
                          if jnp.issubdtype(a.dtype, jnp.floating))
  assert c.optim.frozen_patterns == (r"^vae/",)
  assert size(tx.init(params)) == 2 * (size(params) - size(params["vae"]))
  images = jnp.asarray(rs.uniform(size=(2, 16, 16, 3)), jnp.float32)
  losses, final = fixed_batch_losses(tok, params, images, 2, tx=tx)
  assert np.all(np.isfinite(losses))
  after = _flat(final["vae"])
  for k in want:
    np.testing.assert_array_equal(after[k], want[k], err_msg=k)
  for part in ("encoder", "decoder"):
    moved = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))), final[part],
                         params[part])
    assert all(jax.tree.leaves(moved)), part


def test_checkpoint_that_does_not_fit_is_refused(vae_dir):
  with pytest.raises(ValueError, match=r"norm_groups: model 2 vs checkpoint 4"):
    api.build(_config(vae_dir, vae_norm_groups=2).model)
  with pytest.raises(ValueError, match=r"scaling_factor: model 0.13025 vs checkpoint 0.18215"):
    api.build(_config(vae_dir, vae_scaling_factor=0.13025).model)
  with pytest.raises(ValueError, match="needs use_vae=True"):
    api.build(_config(vae_dir, use_vae=False).model)
  with pytest.raises(ValueError, match="sd_vae needs vae_checkpoint"):
    layton_config.get_config("sd_vae")
  with pytest.raises(ValueError, match="vae must be one of"):
    layton_config.get_config("sd_vae,vae=sd3,vae_checkpoint=/x")
  c = layton_config.get_config("sd_vae,vae=sdxl-vae,vae_checkpoint=/x")
  assert (tuple(c.model.vae_channels), c.model.vae_layers_per_block, c.model.vae_norm_groups,
          c.model.vae_latent_channels, c.model.vae_scaling_factor) == ((128, 256, 512, 512), 2, 32,
                                                                       4, 0.13025)
