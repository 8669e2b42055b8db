"""Images -> token files -> images with a One-D-Piece tokenizer and each prior."""
import re

import numpy as np
import pytest
import jax
from flax import nnx

from jaxtok.codec import image_codec, priors
from jaxtok.configs import onedpiece
from jaxtok.generators import gpt
from jaxtok.tokenizers import api


@pytest.fixture(scope="module")
def tok():
  tokenizer = api.build(onedpiece.get_config("tiny").model)
  return tokenizer, tokenizer.init(jax.random.key(0))


@pytest.fixture(scope="module")
def images(tok):
  s = tok[0].image_size
  return np.random.default_rng(0).integers(0, 256, (3, s, s, 3)).astype(np.uint8)


def _causal(vocab, seq_len, seed=0):
  model = gpt.make_model(dict(name="gpt", codebook_size=vocab, seq_len=seq_len, num_classes=0,
                              width=16, depth=1, heads=2), rngs=nnx.Rngs(seed))
  graphdef, params = nnx.split(model)
  return priors.Causal(graphdef, params, seq_len=seq_len, vocab_size=vocab)


def _priors(tokenizer, tokens):
  k, v = tokenizer.max_tokens, tokenizer.vocab_size
  return {"uniform": priors.Uniform(v), "unigram": priors.Unigram.fit(tokens, v),
          "unigram_pos": priors.Unigram.fit(tokens, v, per_position=True),
          "causal": _causal(v, k)}


def test_files_round_trip_tokens_and_images_with_every_prior(tok, images):
  tokenizer, params = tok
  base = image_codec.Model(tokenizer, params, priors.Uniform(tokenizer.vocab_size))
  tokens = image_codec.tokenize(base, images)
  k = tokenizer.max_tokens
  for name, prior in _priors(tokenizer, tokens).items():
    model = image_codec.Model(tokenizer, params, prior)
    for image, want in zip(images, tokens):
      for n in (1, k // 2, k):
        data = image_codec.compress(model, image, num_tokens=n)
        (got,), header = image_codec.decode_tokens(model, data)
        np.testing.assert_array_equal(got, want[:n], err_msg=name)
        decoded, used = image_codec.decompress(model, data)
        assert used == n and header.num_tokens == n
        np.testing.assert_array_equal(decoded, image_codec.detokenize(model, want[None, :n])[0])
  # Raw ids cost k * log2(K) bits: the uniform prior's payload is within a byte of that.
  uni = image_codec.Model(tokenizer, params, priors.Uniform(tokenizer.vocab_size))
  payload = len(image_codec.compress(uni, images[0])) - 10 - (k >= 128)
  assert abs(payload - k * np.log2(tokenizer.vocab_size) / 8) <= 1


def test_fitted_unigram_codes_repetitive_tokens_in_fewer_bytes(tok):
  tokenizer, params = tok
  v, k = tokenizer.vocab_size, tokenizer.max_tokens
  train = np.zeros((50, k), np.int32)
  train[:, ::2] = 3
  uni = priors.Unigram.fit(train, v)
  model = image_codec.Model(tokenizer, params, uni)
  data = image_codec.encode_tokens(model, train[0], (32, 32))
  raw = image_codec.encode_tokens(image_codec.Model(tokenizer, params, priors.Uniform(v)), train[0],
                                  (32, 32))
  assert len(data) < len(raw)
  # p(0) = p(3) ~ 1/2: about one bit per token.
  assert len(data) - 10 <= np.ceil((k * (1 + 1e-3) + 2) / 8)


def test_wrong_model_truncation_and_progressive_decoding(tok, images):
  tokenizer, params = tok
  tokens = image_codec.tokenize(image_codec.Model(tokenizer, params, priors.Uniform(2)), images)
  model = image_codec.Model(tokenizer, params, _causal(tokenizer.vocab_size, tokenizer.max_tokens))
  other = image_codec.Model(tokenizer, params, _causal(tokenizer.vocab_size, tokenizer.max_tokens, 1))
  data = image_codec.compress(model, images[0])
  with pytest.raises(ValueError, match="coded with model"):
    image_codec.decompress(other, data)
  with pytest.raises(ValueError, match="truncated"):
    image_codec.decompress(model, data[:-1])
  used = []
  for cut in range(11, len(data)):
    try:
      decoded, n = image_codec.decompress(model, data[:cut], partial=True)
    except ValueError as err:
      assert "determine no token yet" in str(err)
      continue
    np.testing.assert_array_equal(decoded, image_codec.detokenize(model, tokens[:1, :n])[0])
    used.append(n)
  assert used == sorted(used) and used and used[-1] < tokenizer.max_tokens


def test_choose_length_by_psnr_and_by_bytes(tok, images):
  tokenizer, params = tok
  model = image_codec.Model(tokenizer, params, priors.Uniform(tokenizer.vocab_size))
  k = tokenizer.max_tokens
  recs = image_codec.reconstructions(model, images, range(1, k + 1))
  quality = {n: image_codec.psnr(images, r) for n, r in recs.items()}
  target = float(np.median(np.concatenate(list(quality.values()))))
  for i, c in enumerate(image_codec.choose_length(model, images, target_psnr=target)):
    hits = [n for n in range(1, k + 1) if quality[n][i] >= target]
    assert c.num_tokens == (hits[0] if hits else k) and c.reached == bool(hits)
    assert c.psnr == pytest.approx(quality[c.num_tokens][i])
    assert image_codec.decompress(model, c.data)[1] == c.num_tokens
  budget = len(image_codec.compress(model, images[0], num_tokens=k // 2))
  for c in image_codec.choose_length(model, images, max_bytes=budget):
    assert len(c.data) <= budget and c.num_tokens == k // 2
  with pytest.raises(ValueError, match="exactly one"):
    image_codec.choose_length(model, images)


def test_bad_images_are_refused(tok):
  tokenizer, params = tok
  model = image_codec.Model(tokenizer, params, priors.Uniform(tokenizer.vocab_size))
  s = tokenizer.image_size
  with pytest.raises(ValueError, match="uint8"):
    image_codec.compress(model, np.zeros((s, s, 3), np.float32))
  with pytest.raises(ValueError, match=re.escape(f"multiples of {s}), got {s + 1}x{s}")):
    image_codec.compress(model, np.zeros((s + 1, s, 3), np.uint8))
  with pytest.raises(ValueError, match="num_tokens"):
    image_codec.compress(model, np.zeros((s, s, 3), np.uint8), num_tokens=0)


def test_unigram_save_load_and_fingerprints(tmp_path):
  tokens = np.random.default_rng(0).integers(0, 9, (20, 4))
  uni = priors.Unigram.fit(tokens, 9, per_position=True)
  uni.save(str(tmp_path / "u.npz"))
  back = priors.Unigram.load(str(tmp_path / "u.npz"))
  assert back.fingerprint() == uni.fingerprint()
  np.testing.assert_array_equal(back.cdf(tokens[0, :2]), uni.cdf(tokens[0, :2]))
  assert priors.Unigram.fit(tokens, 9).fingerprint() != uni.fingerprint()
  assert _causal(9, 4, 0).fingerprint() != _causal(9, 4, 1).fingerprint()
  with pytest.raises(ValueError, match="lie in"):
    priors.Unigram.fit(tokens, 5)


def test_tiles_hand_case_and_inverse():
  image = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
  tiles = image_codec.to_tiles(image, 2)
  assert tiles.shape == (6, 2, 2, 3)
  np.testing.assert_array_equal(tiles[1], image[0:2, 2:4])      # row-major: tile 1 is top, middle
  np.testing.assert_array_equal(tiles[3], image[2:4, 0:2])
  np.testing.assert_array_equal(image_codec.from_tiles(tiles, 4, 6), image)


def test_tiled_image_round_trip_and_token_major_progressive_decoding(tok):
  tokenizer, params = tok
  s, k = tokenizer.image_size, tokenizer.max_tokens
  image = np.random.default_rng(1).integers(0, 256, (2 * s, 3 * s, 3)).astype(np.uint8)
  model = image_codec.Model(tokenizer, params, _causal(tokenizer.vocab_size, k))
  tokens = image_codec.image_tokens(model, image)
  np.testing.assert_array_equal(tokens, image_codec.tokenize(model, image_codec.to_tiles(image, s)))
  data = image_codec.compress(model, image)
  per_tile, header = image_codec.decode_tokens(model, data)
  assert (header.height, header.width, header.num_tokens) == (2 * s, 3 * s, k)
  np.testing.assert_array_equal(np.stack(per_tile), tokens)
  decoded, used = image_codec.decompress(model, data)
  assert used == 6 * k
  np.testing.assert_array_equal(decoded, image_codec.decode_image(model, list(tokens), 2 * s, 3 * s))
  # A byte prefix gives every tile its first i or i + 1 tokens (token-major order), all correct.
  head = len(data) - header.payload_bytes
  for cut in range(head, len(data), 3):
    per_tile, _ = image_codec.decode_tokens(model, data[:cut], partial=True)
    counts = [len(t) for t in per_tile]
    assert max(counts) - min(counts) <= 1 and counts == sorted(counts, reverse=True)
    for t, got in zip(tokens, per_tile):
      np.testing.assert_array_equal(got, t[:len(got)])
