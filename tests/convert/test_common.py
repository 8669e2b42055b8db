"""jaxtok.convert.common: reading checkpoints without unpickling, and key/shape checks."""
import json

import jax
import numpy as np
import pytest
from flax import nnx

from jaxtok.convert import common as C


def _write_safetensors(path, tensors, metadata=None):
  header, blobs, offset = {}, [], 0
  if metadata:
    header["__metadata__"] = metadata
  for key, arr in tensors.items():
    arr = np.ascontiguousarray(arr)
    dtype = {np.float32: "F32", np.int64: "I64", np.float16: "F16"}[arr.dtype.type]
    raw = arr.tobytes()
    header[key] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [offset, offset + len(raw)]}
    blobs.append(raw)
    offset += len(raw)
  h = json.dumps(header).encode()
  path.write_bytes(len(h).to_bytes(8, "little") + h + b"".join(blobs))


def test_safetensors_round_trip_and_metadata(tmp_path):
  a = np.arange(6, dtype=np.float32).reshape(2, 3)
  b = np.array([1, 2, 3], np.int64)
  _write_safetensors(tmp_path / "x.safetensors", {"a.weight": a, "b": b}, {"k": "v"})
  flat, meta = C.read_checkpoint(tmp_path / "x.safetensors")
  assert meta == {"k": "v"}
  np.testing.assert_array_equal(flat["a.weight"], a)
  np.testing.assert_array_equal(flat["b"], b)


def test_bad_files_are_refused(tmp_path):
  with pytest.raises(ValueError, match="does not exist"):
    C.read_checkpoint(tmp_path / "none.safetensors")
  (tmp_path / "w.npz").write_bytes(b"x")
  with pytest.raises(ValueError, match="unknown checkpoint format"):
    C.read_checkpoint(tmp_path / "w.npz")
  _write_safetensors(tmp_path / "t.safetensors", {"a": np.zeros((4, 4), np.float32)})
  data = (tmp_path / "t.safetensors").read_bytes()
  (tmp_path / "t.safetensors").write_bytes(data[:-8])
  with pytest.raises(ValueError, match="truncated"):
    C.read_checkpoint(tmp_path / "t.safetensors")


def test_check_keys_names_missing_unexpected_and_mismatched():
  with pytest.raises(ValueError) as e:
    C.check_keys({"a": (2, 3), "b": (4,), "c": (1,)}, {"a": np.zeros((3, 2)), "c": np.zeros(1),
                                                       "zzz": np.zeros(1)}, source="f.bin")
  msg = str(e.value)
  assert "f.bin" in msg and "missing keys [b]" in msg and "unexpected keys [zzz]" in msg
  assert "a: [3, 2] vs expected [2, 3]" in msg
  C.check_keys({"a": (2,)}, {"a": np.zeros(2)})  # agreeing: no error


def test_fill_state_fills_and_casts():
  abstract = jax.eval_shape(lambda: nnx.state(nnx.Linear(3, 4, rngs=nnx.Rngs(0))))
  assert C.state_shapes(abstract) == {"kernel": (3, 4), "bias": (4,)}
  k = np.random.default_rng(0).normal(size=(3, 4))
  state = C.fill_state(abstract, {"kernel": k, "bias": np.zeros(4)})
  lin = nnx.merge(nnx.graphdef(nnx.Linear(3, 4, rngs=nnx.Rngs(0))), state)
  assert lin.kernel.get_value().dtype == np.float32
  np.testing.assert_allclose(np.asarray(lin.kernel.get_value()), k, rtol=1e-6)
  with pytest.raises(ValueError, match="missing keys \\[bias\\]"):
    C.fill_state(abstract, {"kernel": k})


def test_torch_files_load_weights_only(tmp_path):
  torch = pytest.importorskip("torch")
  torch.save({"state_dict": {"w": torch.ones(2, 2), "step": 3}}, tmp_path / "m.pt")
  flat, meta = C.read_checkpoint(tmp_path / "m.pt")
  assert list(flat) == ["w"] and meta == {}


def test_torch_file_without_torch_gives_a_clear_error(tmp_path, monkeypatch):
  import sys
  monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
  (tmp_path / "m.bin").write_bytes(b"not read")
  with pytest.raises(ValueError, match="needs torch"):
    C.read_checkpoint(tmp_path / "m.bin")
