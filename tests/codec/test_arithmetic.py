"""The exact arithmetic coder, the probability -> frequency tables, and the file container."""
import binascii

import numpy as np
import pytest

from jaxtok.codec import arithmetic, container, freqs

# Two symbols, precision 2: p(0) = 1/4, p(1) = 3/4.
SKEW = np.array([0, 1, 4], np.int64)


def _static(cdf):
  return lambda prefix: cdf


@pytest.mark.parametrize("tokens,payload", [
    ([0], b""),          # [0, 1/4): the cell [0, 1/4) -> bits "00", all zeros, dropped
    ([0, 0], b""),       # [0, 1/16)
    ([1], b"\x80"),      # [1/4, 1): shortest cell [1/2, 1) -> "1"
    ([1, 0], b"\x40"),   # [4/16, 7/16): [2/8, 3/8) -> "010"
    ([0, 1], b"\x20"),   # [1/16, 4/16): [1/8, 2/8) -> "001"
])
def test_hand_derived_payloads(tokens, payload):
  got, _ = arithmetic.encode(tokens, _static(SKEW), precision=2)
  assert got == payload
  np.testing.assert_array_equal(arithmetic.decode(got, _static(SKEW), len(tokens), precision=2),
                                tokens)


def _adaptive(vocab, seed):
  """A model whose table depends on the whole prefix (as a causal prior's does)."""
  def cdf(prefix):
    rng = np.random.default_rng([seed, len(prefix)] + [int(t) for t in prefix])
    return freqs.quantize(rng.dirichlet(np.full(vocab, 0.3)))
  return cdf


@pytest.mark.parametrize("vocab,n,seed", [(2, 40, 0), (7, 25, 1), (300, 12, 2), (64000, 6, 3)])
def test_round_trip_and_length_bound(vocab, n, seed):
  model = _adaptive(vocab, seed)
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, vocab, n)
  payload, needed = arithmetic.encode(tokens, model)
  np.testing.assert_array_equal(arithmetic.decode(payload, model, n), tokens)
  ideal = sum(freqs.bits(model(tokens[:i]), t) for i, t in enumerate(tokens))
  assert len(payload) <= np.ceil((ideal + 2) / 8)          # within 2 bits of -log2 P, whole bytes
  assert needed == sorted(needed) and needed[-1] <= len(payload)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_byte_prefix_decodes_a_correct_token_prefix(seed):
  model = _adaptive(5, seed)
  tokens = np.random.default_rng(seed).integers(0, 5, 30)
  payload, needed = arithmetic.encode(tokens, model)
  for m in range(len(payload)):
    got = arithmetic.decode(payload[:m], model, len(tokens), partial=True)
    np.testing.assert_array_equal(got, tokens[:len(got)])   # never a wrong token
    assert len(got) >= sum(1 for b in needed if b <= m)     # at least what bytes_needed promises
  assert len(arithmetic.decode(payload, model, len(tokens))) == len(tokens)


def test_bad_tables_and_tokens_are_refused():
  with pytest.raises(ValueError, match="strictly increasing"):
    arithmetic.encode([0], _static(np.array([0, 0, 4])), precision=2)
  with pytest.raises(ValueError, match="from 0 to 2\\*\\*2"):
    arithmetic.encode([0], _static(np.array([0, 1, 3])), precision=2)
  with pytest.raises(ValueError, match="outside"):
    arithmetic.encode([2], _static(SKEW), precision=2)
  with pytest.raises(ValueError, match="precision"):
    arithmetic.encode([0], _static(SKEW), precision=0)


def test_quantize_hand_values_and_invariants():
  # T = 16, K = 3: 1 + floor(p * 13) = 7, 4, 4 (sum 15); the remainder 1 goes to the argmax.
  np.testing.assert_array_equal(freqs.quantize([0.5, 0.25, 0.25], precision=4), [0, 8, 12, 16])
  p = np.random.default_rng(0).dirichlet(np.full(1000, 0.01))
  cdf = freqs.quantize(p)
  assert cdf[-1] == 1 << freqs.PRECISION and np.all(np.diff(cdf) >= 1)
  np.testing.assert_array_equal(cdf, freqs.quantize(p.copy()))
  logits = np.log(p + 1e-30).astype(np.float32)
  assert abs(freqs.bits(freqs.from_logits(logits), int(np.argmax(p))) + np.log2(p.max())) < 1e-3
  with pytest.raises(ValueError, match="finite"):
    freqs.from_logits(np.array([0.0, np.nan]))


def _file(payload=b"\x12\x34\x56", k=16):
  return container.pack(container.Header(b"ab", 32, 32, k, len(payload)), payload)


def test_container_layout_and_checks():
  data = _file()
  # magic, version, id, 4 one-byte varints, crc: 10 header bytes for a small image.
  assert data[:4] == b"J\x01ab" and data[4:8] == bytes([32, 32, 16, 3]) and len(data) == 13
  assert int.from_bytes(data[8:10], "big") == binascii.crc_hqx(data[:8] + data[10:], 0)
  header, payload, complete = container.unpack(data, model_id=b"ab")
  assert header == container.Header(b"ab", 32, 32, 16, 3) and payload == b"\x12\x34\x56" and complete
  with pytest.raises(ValueError, match="coded with model 6162"):
    container.unpack(data, model_id=b"xy")
  with pytest.raises(ValueError, match="truncated: payload has 1 of 3"):
    container.unpack(data[:-2], model_id=b"ab")
  assert container.unpack(data[:-2], model_id=b"ab", partial=True)[1:] == (b"\x12", False)
  bad = bytearray(data)
  bad[-1] ^= 1
  with pytest.raises(ValueError, match="corrupted"):
    container.unpack(bytes(bad), model_id=b"ab")
  with pytest.raises(ValueError, match="not a jaxtok token file"):
    container.unpack(b"PNG....", model_id=b"ab")
  with pytest.raises(ValueError, match="version"):
    container.unpack(b"J\x09" + data[2:], model_id=b"ab")
  with pytest.raises(ValueError, match="header is cut"):
    container.unpack(data[:5], model_id=b"ab")
  big = _file(k=300)                                    # 300 needs a two-byte varint
  assert container.unpack(big, model_id=b"ab")[0].num_tokens == 300
