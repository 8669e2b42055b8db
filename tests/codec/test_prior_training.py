"""Fitting the codec's priors for a tokenizer run, loading them back, and coding with them."""
import json
import os

import numpy as np
import pytest

from jaxtok.codec import image_codec, prior_training, vocab


def test_compact_vocabulary_hand_case():
  id_map = vocab.compact(np.array([[5, 2], [2, 7]]), 9)
  np.testing.assert_array_equal(id_map, [3, 3, 0, 3, 3, 1, 3, 2, 3])  # seen 2, 5, 7; escape = 3
  assert vocab.size(id_map) == 4
  p = vocab.expand(np.array([0.5, 0.2, 0.1, 0.2]), id_map)
  np.testing.assert_allclose(p[[2, 5, 7]], [0.5, 0.2, 0.1])
  np.testing.assert_allclose(p[[0, 1, 3, 4, 6, 8]], 0.2 / 6)
  assert vocab.size(vocab.compact(np.arange(4), 4)) == 4           # all seen: no escape id
  with pytest.raises(ValueError, match="lie in"):
    vocab.compact(np.array([9]), 9)


def test_train_writes_every_prior_and_they_code_heldout_images(fitted):
  from jaxtok.eval import checkpoints
  run, out, result = fitted
  with open(os.path.join(out, "prior.json")) as f:
    meta = json.load(f)
  assert meta == result["meta"] and meta["num_examples"] == 48
  tokenizer, params, _ = checkpoints.load_tokenizer(None, run)
  images = prior_training.heldout_images(prior_training.run_data_config(run), 2)
  for kind in prior_training.KINDS:
    model = image_codec.Model(tokenizer, params, prior_training.load(out, kind, tokenizer))
    for image in images:
      data = image_codec.compress(model, image)
      decoded, n = image_codec.decompress(model, data)
      assert n == tokenizer.max_tokens
      want = image_codec.detokenize(model, image_codec.tokenize(model, image[None]))[0]
      np.testing.assert_array_equal(decoded, want)
  with pytest.raises(ValueError, match="prior kind must be one of"):
    prior_training.load(out, "bigram", tokenizer)


def test_refits_into_another_folder_only(fitted):
  run, out, _ = fitted
  with pytest.raises(ValueError, match="fitted differently"):
    prior_training.train(run, out, num_examples=40, config_arg="tiny", progress=False)
