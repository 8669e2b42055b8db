"""pFID: a hand-built "tokenizer" (2x2 blocks of grey levels from a 16-level codebook) and a small
deterministic feature function, so the expected relations are known without any network."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtok.metrics import fid as fid_lib
from jaxtok.metrics import pfid as pfid_lib

LEVELS = 16
CODEBOOK = jnp.linspace(0.0, 1.0, LEVELS)[:, None]  # [C=16, D=1]
PROJ = np.random.default_rng(0).normal(size=(4 * 4 * 3, 6))


@jax.jit
def encode(images):
  """[B, 4, 4, 3] -> 4 tokens per image: the nearest grey level of each 2x2 block's mean."""
  b = images.shape[0]
  blocks = images.reshape(b, 2, 2, 2, 2, 3).mean(axis=(2, 4, 5)).reshape(b, 4)
  return jnp.argmin(jnp.abs(blocks[..., None] - CODEBOOK[:, 0]), axis=-1).astype(jnp.int32)


@jax.jit
def decode(tokens):
  b = tokens.shape[0]
  grey = CODEBOOK[tokens, 0].reshape(b, 2, 1, 2, 1, 1)
  return jnp.broadcast_to(grey, (b, 2, 2, 2, 2, 3)).reshape(b, 4, 4, 3)


def features(images):
  """A fixed random projection of the pixels with a tanh: deterministic, 6-d."""
  x = np.asarray(images, np.float64).reshape(images.shape[0], -1)
  return np.tanh(x @ PROJ)


def real_batches(seed=0, n_batches=2, batch=32):
  rng = np.random.default_rng(seed)
  for _ in range(n_batches):
    # Dark images: grey levels 0..5 of 15 plus a little noise (so rFID is small but not zero).
    toks = rng.integers(0, 6, size=(batch, 4))
    img = np.asarray(decode(jnp.asarray(toks)))
    yield np.clip(img + rng.normal(0, 0.01, img.shape), 0, 1).astype(np.float32)


def run(perturbation, seed=0):
  return pfid_lib.pfid(real_batches(seed), encode=encode, decode=decode, features=features,
                       codebook=CODEBOOK, perturbation=perturbation, rng=jax.random.key(1))


def test_zero_perturbation_equals_rfid_of_the_reconstructions():
  out = run(pfid_lib.Perturbation(p=0.0, k=8, fraction=1.0))
  assert out["pfid"] == out["rfid"]
  assert out["changed_token_rate"] == 0.0
  # rFID computed independently from all reconstructions at once.
  real = np.concatenate(list(real_batches(0)))
  recon = pfid_lib.quantize_8bit(decode(encode(jnp.asarray(real))))
  expected = fid_lib.fid_from_features(features(recon), features(real))
  np.testing.assert_allclose(out["rfid"], expected, rtol=1e-9, atol=1e-12)
  assert out["num_images"] == 64
  assert out["perturbation"] == {"p": 0.0, "k": 8, "fraction": 1.0}
  # k = 1 (only the token's own code) also changes nothing.
  assert run(pfid_lib.Perturbation(p=1.0, k=1))["pfid"] == out["rfid"]


def test_perturbation_increases_the_distance_with_its_strength():
  weak = run(pfid_lib.Perturbation(p=0.2, k=8))
  strong = run(pfid_lib.Perturbation(p=1.0, k=8))
  assert weak["rfid"] == strong["rfid"]
  assert strong["pfid"] > weak["pfid"] > weak["rfid"]
  assert strong["pfid"] > 10 * strong["rfid"] + 1e-3
  # A token changes with probability p (k - 1) / k.
  np.testing.assert_allclose(strong["changed_token_rate"], 7 / 8, atol=0.05)
  np.testing.assert_allclose(weak["changed_token_rate"], 0.2 * 7 / 8, atol=0.06)
  # Only the first floor(B * fraction) images of a batch are perturbed.
  half = run(pfid_lib.Perturbation(p=1.0, k=8, fraction=0.5))
  np.testing.assert_allclose(half["changed_token_rate"], 7 / 16, atol=0.05)
  assert "8 nearest codes" in strong["perturbation_description"]


def test_perturbed_tokens_are_near_neighbours():
  tokens = jnp.full((4, 6), 7, jnp.int32)
  new, rate = pfid_lib.perturb_tokens(jax.random.key(0), tokens, CODEBOOK,
                                      pfid_lib.Perturbation(p=1.0, k=3))
  # The 3 nearest grey levels of level 7 are 6, 7, 8.
  assert set(np.unique(np.asarray(new))) <= {6, 7, 8}
  assert 0.3 < float(rate) < 1.0


def test_bad_arguments_name_the_field():
  with pytest.raises(ValueError, match=r"perturbation p must lie in \[0, 1\], got 1.5"):
    pfid_lib.Perturbation(p=1.5)
  with pytest.raises(ValueError, match="perturbation k must be an int >= 1, got 0"):
    pfid_lib.Perturbation(k=0)
  with pytest.raises(ValueError, match="perturbation k must be <= the codebook size 16, got 17"):
    pfid_lib.perturb_tokens(jax.random.key(0), jnp.zeros((2, 2), jnp.int32), CODEBOOK,
                            pfid_lib.Perturbation(k=17))
  with pytest.raises(ValueError, match="at least 2 images, got 0"):
    pfid_lib.pfid([], encode=encode, decode=decode, features=features, codebook=CODEBOOK,
                  perturbation=pfid_lib.Perturbation(), rng=jax.random.key(0))
