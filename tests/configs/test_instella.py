"""configs/instella.py: TiTok with the binary quantizer gives bit tokens [K, bits] that round-trip
through the quantizer and decode; the binary generator configs build and check their data."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtok.quantizers import binary
from tests.tools.conftest import random_like


@pytest.fixture(scope="module")
def tiny_binary_titok():
  from jaxtok.configs import instella
  from jaxtok.tokenizers import api
  config = instella.get_config("tiny")
  tokenizer = api.build(config.model)
  return config, tokenizer, random_like(tokenizer.abstract_params(), seed=0, scale=0.3)


def test_config_is_titok_with_binary_bits():
  from jaxtok.configs import instella
  full = instella.get_config("bits=64")
  assert full.model.name == "titok" and full.model.quantizer == "binary"
  assert full.model.token_size == 64 and full.model.num_latent_tokens == 128
  assert instella.get_config("tiny").model.token_size == 32
  with pytest.raises(ValueError, match="always uses quantizer=binary, got 'quantizer=vq'"):
    instella.get_config("quantizer=vq")
  with pytest.raises(ValueError, match="'bits' must be an int, got 'x'"):
    instella.get_config("bits=x")


def test_bits_round_trip_through_the_quantizer_and_decode(tiny_binary_titok):
  _, tokenizer, params = tiny_binary_titok
  images = jax.random.uniform(jax.random.key(0), (2, 16, 16, 3))
  tokens = np.asarray(tokenizer.encode(params, images).tokens)
  assert tokens.shape == (2, 8, 32) and tokens.dtype == np.int32
  assert set(np.unique(tokens)) <= {0, 1} and 0 < tokens.mean() < 1
  # Bits -> codes {0, 1} -> logits of those signs -> the quantizer's (eval) bits: the same bits.
  codes = binary.indices_to_codes(jnp.asarray(tokens), 32)
  np.testing.assert_array_equal(codes, tokens.astype(np.float32))
  again = binary.quantize(4.0 * (2.0 * codes - 1.0), train=False).indices
  np.testing.assert_array_equal(np.asarray(again), tokens)
  out = tokenizer.decode(params, jnp.asarray(tokens))
  assert out.shape == (2, 16, 16, 3) and np.all(np.isfinite(np.asarray(out)))


def test_token_data_check_for_the_bit_generators(tmp_path):
  from jaxtok.configs import binary_ar, binary_diffusion
  from jaxtok.data import tokens as token_data
  path = str(tmp_path / "bits")
  bits = np.random.default_rng(0).integers(0, 2, (4, 8, 32))
  token_data.write_token_dataset(path, bits, meta={"codebook_size": 2})
  assert np.load(f"{path}/tokens.npy").dtype == np.int32
  for mod in (binary_ar, binary_diffusion):
    config = mod.get_config("tiny")
    token_data.check_data(config, token_data.read_meta(path), path)
    config.model.num_bits = 16
    with pytest.raises(ValueError, match=r"config.model.num_bits is 16, the data's tokens have 32"):
      token_data.check_data(config, token_data.read_meta(path), path)


@pytest.mark.parametrize("name", ["resgen", "binary_diffusion", "binary_ar"])
def test_generator_configs_share_the_dialect_and_type_their_counts(name):
  import importlib
  from jaxtok.configs import common
  from jaxtok.train import generator
  mod = importlib.import_module(f"jaxtok.configs.{name}")
  c = mod.get_config("tiny,tokens=12,classes=3")
  assert c.model.seq_len == 12 and c.model.num_classes == 3 and c.model.name == name
  assert set(common.run_config().keys()) <= set(c.keys())
  assert generator.model_config(c) is c.model and name in generator.GENERATORS
  with pytest.raises(ValueError, match="'tokens' must be an int"):
    mod.get_config("tokens=12.5")
