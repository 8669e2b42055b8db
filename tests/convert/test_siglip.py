"""Parity of converted Hugging Face SigLIP vision towers with a numpy reference forward.

The fixture is a tiny random state dict in the HF `SiglipVisionModel` layout (keys under
`vision_model.`: separate q/k/v/out projections [out, in], conv patch embedding [W, 3, p, p], the MAP
head's nn.MultiheadAttention in_proj [3W, W]); `_reference` computes transformers'
`SiglipVisionTransformer` forward on those torch-layout arrays directly (x @ w.T + b, per-head
softmax attention, tanh GELU, LayerNorm eps 1e-6), so a wrong transpose, head split or q/k/v order
in the converter shows up as a mismatch.
"""
import functools

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtok.convert import siglip as C
from jaxtok.nn import siglip as S

W, L, H, M, P, IMG = 32, 2, 4, 48, 4, 16


def _fixture(head=True, seed=0):
  rng = np.random.default_rng(seed)
  r = lambda *s: (rng.standard_normal(s) * 0.2).astype(np.float32)
  flat = {"embeddings.patch_embedding.weight": r(W, 3, P, P), "embeddings.patch_embedding.bias": r(W),
          "embeddings.position_embedding.weight": r((IMG // P)**2, W),
          "post_layernorm.weight": 1 + r(W), "post_layernorm.bias": r(W)}
  for i in range(L):
    pre = f"encoder.layers.{i}."
    for n in ("layer_norm1", "layer_norm2"):
      flat[pre + n + ".weight"], flat[pre + n + ".bias"] = 1 + r(W), r(W)
    for n in ("q_proj", "k_proj", "v_proj", "out_proj"):
      flat[pre + f"self_attn.{n}.weight"], flat[pre + f"self_attn.{n}.bias"] = r(W, W), r(W)
    flat[pre + "mlp.fc1.weight"], flat[pre + "mlp.fc1.bias"] = r(M, W), r(M)
    flat[pre + "mlp.fc2.weight"], flat[pre + "mlp.fc2.bias"] = r(W, M), r(W)
  if head:
    flat.update({"head.probe": r(1, 1, W), "head.attention.in_proj_weight": r(3 * W, W),
                 "head.attention.in_proj_bias": r(3 * W), "head.attention.out_proj.weight": r(W, W),
                 "head.attention.out_proj.bias": r(W), "head.layernorm.weight": 1 + r(W),
                 "head.layernorm.bias": r(W), "head.mlp.fc1.weight": r(M, W),
                 "head.mlp.fc1.bias": r(M), "head.mlp.fc2.weight": r(W, M), "head.mlp.fc2.bias": r(W)})
  return {C.PREFIX + k: v for k, v in flat.items()}


def _ln(x, w, b):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu)**2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + 1e-6) * w + b


def _gelu_tanh(x):
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def _mha(q, k, v):
  """q [B, T, W], k, v [B, S, W] -> [B, T, W] with H heads."""
  b, t, _ = q.shape
  split = lambda a: a.reshape(b, a.shape[1], H, W // H).transpose(0, 2, 1, 3)
  s = split(q) @ split(k).transpose(0, 1, 3, 2) / np.sqrt(W // H)
  s = np.exp(s - s.max(-1, keepdims=True))
  s /= s.sum(-1, keepdims=True)
  return (s @ split(v)).transpose(0, 2, 1, 3).reshape(b, t, W)


def _reference(flat, images):
  """transformers' SiglipVisionTransformer on the HF-layout arrays: (hidden_states list, last, pooled)."""
  f = {k[len(C.PREFIX):]: v.astype(np.float64) for k, v in flat.items()}
  lin = lambda x, n: x @ f[n + ".weight"].T + f[n + ".bias"]
  x = (images.astype(np.float64) - 0.5) / 0.5
  b = x.shape[0]
  g = IMG // P
  patches = x.reshape(b, g, P, g, P, 3).transpose(0, 1, 3, 5, 2, 4).reshape(b, g * g, 3 * P * P)
  conv = f["embeddings.patch_embedding.weight"].reshape(W, -1)
  h = patches @ conv.T + f["embeddings.patch_embedding.bias"] + f["embeddings.position_embedding.weight"]
  states = [h]
  for i in range(L):
    pre = f"encoder.layers.{i}."
    y = _ln(h, f[pre + "layer_norm1.weight"], f[pre + "layer_norm1.bias"])
    a = _mha(lin(y, pre + "self_attn.q_proj"), lin(y, pre + "self_attn.k_proj"),
             lin(y, pre + "self_attn.v_proj"))
    h = h + lin(a, pre + "self_attn.out_proj")
    y = _ln(h, f[pre + "layer_norm2.weight"], f[pre + "layer_norm2.bias"])
    h = h + lin(_gelu_tanh(lin(y, pre + "mlp.fc1")), pre + "mlp.fc2")
    states.append(h)
  last = _ln(h, f["post_layernorm.weight"], f["post_layernorm.bias"])
  pooled = None
  if "head.probe" in f:
    wq, wk, wv = np.split(f["head.attention.in_proj_weight"], 3)
    bq, bk, bv = np.split(f["head.attention.in_proj_bias"], 3)
    probe = np.broadcast_to(f["head.probe"], (b, 1, W))
    a = _mha(probe @ wq.T + bq, last @ wk.T + bk, last @ wv.T + bv)
    a = lin(a, "head.attention.out_proj")
    y = _ln(a, f["head.layernorm.weight"], f["head.layernorm.bias"])
    pooled = (a + lin(_gelu_tanh(lin(y, "head.mlp.fc1")), "head.mlp.fc2"))[:, 0]
  return states, last, pooled


@functools.lru_cache(maxsize=None)
def _saved(tmpdir, head):
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  path = f"{tmpdir}/siglip_{head}.safetensors"
  save_file(_fixture(head), path)
  return path


def _images():
  return np.random.default_rng(1).uniform(0, 1, (2, IMG, IMG, 3)).astype(np.float32)


@pytest.mark.parametrize("head,scan", [(True, False), (False, True)])
def test_outputs_match_the_reference_forward(tmp_path_factory, head, scan):
  path = _saved(str(tmp_path_factory.getbasetemp()), head)
  cfg, params = C.load(path, dict(num_heads=H, scan_layers=scan) if scan else dict(num_heads=H))
  assert {k: v for k, v in cfg.items() if k != "scan_layers"} == dict(
      width=W, depth=L, num_heads=H, mlp_hidden=M, patch_size=P, image_size=IMG, head=head)
  graphdef, _ = nnx.split(nnx.eval_shape(lambda: S.make_model(cfg, rngs=nnx.Rngs(0))))
  model = nnx.merge(graphdef, params)
  images = _images()
  out = model(jnp.asarray(images), layers=(0, 1, -2, L))
  states, last, pooled = _reference(_fixture(head), images)
  np.testing.assert_allclose(out["last_hidden_state"], last, atol=2e-4)
  for k in (0, 1, L):
    np.testing.assert_allclose(out[f"hidden_states_{k}"], states[k], atol=2e-4)
  assert sorted(k for k in out if k.startswith("hidden_states_")) == [
      "hidden_states_0", "hidden_states_1", "hidden_states_2"]  # -2 == 1 for L = 2
  if head:
    np.testing.assert_allclose(out["pooler_output"], pooled, atol=2e-4)
  else:
    assert "pooler_output" not in out


def test_foreign_or_incomplete_files_are_refused(tmp_path):
  flat = {k[len(C.PREFIX):]: v for k, v in _fixture().items()}
  with pytest.raises(ValueError, match="width 32 is not a released size"):
    C.infer_config(flat)
  with pytest.raises(ValueError, match="not a SigLIP vision state dict"):
    C.infer_config({"text_model.embeddings.token_embedding.weight": np.zeros((2, 2))})
  path = _saved(str(tmp_path), True)
  with pytest.raises(ValueError, match=r"missing keys \[blocks\.blocks\.2\."):
    C.load(path, dict(num_heads=H, depth=3))
  with pytest.raises(ValueError, match=r"unexpected.*head\."):
    C.load(path, dict(num_heads=H, head=False))
  with pytest.raises(ValueError, match="no tensor starts with prefix 'teacher.'"):
    C.read(path, prefix="teacher.")
  with pytest.raises(ValueError, match="do not exist; expected a Hugging Face SigLIP checkpoint"):
    C.load(str(tmp_path / "model.safetensors"))
  with pytest.raises(TypeError, match="config must be a mapping"):
    C.load(path, "So400m")


def test_presets_and_bad_inputs():
  shapes = {k: tuple(v.shape) for k, v in nnx.to_flat_state(S.abstract_params(
      dict(size="So400m", depth=1)))}
  assert shapes[("pos_embed",)] == (27 * 27, 1152)
  assert shapes[("blocks", "blocks", 0, "mlp", "up", "kernel")] == (1152, 4304)
  assert shapes[("head", "attn", "qkv")] == (1152, 3, 16, 72)
  model = nnx.eval_shape(lambda: S.make_model(dict(  # the input checks run before any compute
      width=W, depth=L, num_heads=H, mlp_hidden=M, patch_size=P, image_size=IMG), rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match=r"images must be 16 x 16 .* got shape \(1, 20, 20, 3\)"):
    model(jnp.zeros((1, 20, 20, 3)))
  with pytest.raises(ValueError, match=r"SigLIP layer must be an int in \[-3, 2\].* got 3"):
    model(jnp.zeros((1, IMG, IMG, 3)), layers=(3,))
  with pytest.raises(ValueError, match=r"unknown SigLIP config key\(s\) \['heads'\]"):
    nnx.eval_shape(lambda: S.make_model(dict(width=W, heads=2), rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match="size must be one of"):
    S.config_for("H")


def test_convert_registry_round_trip(tmp_path):
  """convert.convert("siglip", ...) -> save_converted -> load_converted gives the same parameters."""
  import jax  # pylint: disable=g-import-not-at-top
  from jaxtok import convert  # pylint: disable=g-import-not-at-top
  path = _saved(str(tmp_path), False)
  cfg, params = convert.convert("siglip", path, '{"num_heads": 4}')
  assert cfg["name"] == "siglip" and cfg["head"] is False
  convert.save_converted(tmp_path / "out", cfg, params)
  cfg2, params2 = convert.load_converted(tmp_path / "out")
  assert cfg2 == cfg
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params2)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
