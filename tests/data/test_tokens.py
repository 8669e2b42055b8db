"""Tests of the pre-tokenized dataset format and its grain iterator."""
import json
import os

import numpy as np
import pytest

from jaxtok.data import tokens as tok


def _write(tmp_path, n=20, k=4):
  t = np.arange(n * k, dtype=np.int64).reshape(n, k)
  tok.write_token_dataset(str(tmp_path / "ds"), t, np.arange(n) % 3, {"codebook_size": 100})
  return str(tmp_path / "ds"), t


def test_round_trip_and_meta(tmp_path):
  path, t = _write(tmp_path)
  src = tok.TokenSource(path)
  assert len(src) == 20 and src.meta["codebook_size"] == 100 and src.meta["token_shape"] == [4]
  np.testing.assert_array_equal(src[7]["tokens"], t[7])
  assert src[7]["tokens"].dtype == np.int32 and int(src[7]["label"]) == 1
  assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp")]  # no temporary leftovers


def test_epochs_cover_everything_once_and_reshuffle(tmp_path):
  path, _ = _write(tmp_path)
  it = tok.token_iterator(path, batch_size=5, seed=0)
  epoch1 = np.concatenate([next(it)["tokens"][:, 0] for _ in range(4)])
  epoch2 = np.concatenate([next(it)["tokens"][:, 0] for _ in range(4)])
  assert sorted(epoch1) == sorted(epoch2) == list(range(0, 80, 4))
  assert not np.array_equal(epoch1, epoch2)


def test_resume_from_state_continues_exactly(tmp_path):
  path, _ = _write(tmp_path)
  it = tok.token_iterator(path, batch_size=3, seed=1)
  for _ in range(5):
    next(it)
  state = json.loads(json.dumps(it.get_state()))  # the state survives JSON, as checkpoints store it
  expected = [next(it)["tokens"] for _ in range(6)]
  it2 = tok.token_iterator(path, batch_size=3, seed=1)
  it2.set_state(state)
  for e in expected:
    np.testing.assert_array_equal(next(it2)["tokens"], e)


def test_process_shards_are_disjoint(tmp_path):
  path, _ = _write(tmp_path)
  seen = []
  for i in range(2):
    it = tok.token_iterator(path, batch_size=5, seed=0, shard_index=i, shard_count=2, num_epochs=1)
    seen.append({int(x) for b in it for x in b["tokens"][:, 0]})
  assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == 20


def test_continuous_tokens_and_errors(tmp_path):
  tok.write_token_dataset(str(tmp_path / "c"), np.zeros((3, 2, 5)), None)
  assert tok.TokenSource(str(tmp_path / "c"))[0]["tokens"].dtype == np.float32
  with pytest.raises(TypeError, match="must be integers"):
    tok.write_token_dataset(str(tmp_path / "x"), np.zeros((3, 2)))
  with pytest.raises(ValueError, match=r"labels must have shape \(3,\)"):
    tok.write_token_dataset(str(tmp_path / "x"), np.zeros((3, 2), int), np.zeros(4))
  with pytest.raises(FileNotFoundError, match="not a token dataset"):
    tok.TokenSource(str(tmp_path / "missing"))
  path, _ = _write(tmp_path)
  with pytest.raises(ValueError, match="fewer than one batch"):
    tok.token_iterator(path, batch_size=50, seed=0)
