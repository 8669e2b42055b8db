"""Released GPSToken (xtudbxk/GPSToken 372231d) -> jaxtok: parity with the release's own classes.

tests/fixtures/official/gpstoken_tiny.safetensors: the release's `GPSToken` at tiny sizes (16 px,
6 Gaussians, rois 2, 2 blocks of width 32 with 8 heads, 4 features, stem 128, decoder ch 32 x (1, 2),
render 8 x 8), float16-rounded random weights; gpstoken_tiny_outputs.npz: its `encode` on two images
given a fixed partition (regions + initial Gaussians) and its decoder on a random feature map;
gpstoken_release_shapes.json.gz: the state-dict shapes of the released S64 / M128 / L256 configs
(torch meta device). See make_gpstoken_fixture.py.txt.
"""
import functools
import gzip
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file

from jaxtok.convert import common
from jaxtok.convert import gpstoken as G
from jaxtok.tokenizers import api, gaussian_render, gpstoken

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "official")
WEIGHTS = os.path.join(FIXTURES, "gpstoken_tiny.safetensors")
TOL = 1e-4


@functools.lru_cache(maxsize=None)
def _io():
  with np.load(os.path.join(FIXTURES, "gpstoken_tiny_outputs.npz")) as f:
    return {k: f[k] for k in f.files}


@functools.lru_cache(maxsize=None)
def _converted():
  flat, _ = common.read_checkpoint(WEIGHTS)
  cfg = G.infer_config(flat, num_gaussians=6, image_size=16)
  cfg, params = G.load(WEIGHTS, cfg)
  return cfg, nnx.merge(api.build(cfg).graphdef, params)


def test_shapes_give_the_tiny_config():
  cfg, _ = _converted()
  assert {k: cfg[k] for k in ("width", "depth", "roi_size", "stem_channels", "feature_dim", "dec_ch",
                              "dec_ch_mult", "dec_num_res_blocks", "render_size", "num_heads")} == dict(
      width=32, depth=2, roi_size=2, stem_channels=128, feature_dim=4, dec_ch=32, dec_ch_mult=(1, 2),
      dec_num_res_blocks=1, render_size=8, num_heads=8)


def test_refined_gaussians_and_decoder_match_the_release():
  _, model = _converted()
  io = _io()
  tokens = jax.jit(lambda m, *a: m.refine_gaussians(*a))(
      model, jnp.asarray(io["images"]), jnp.asarray(io["regions"]), jnp.asarray(io["init"]))
  assert tokens.shape == io["tokens"].shape == (2, 6, 9)
  np.testing.assert_allclose(np.asarray(tokens), io["tokens"], atol=TOL, rtol=0)
  dec = jax.jit(lambda m, f: m.decoder(f))(model, jnp.asarray(io["feature_map"]))
  np.testing.assert_allclose(np.asarray(dec), io["decoded"], atol=TOL, rtol=0)


def test_roi_align_matches_a_per_sample_loop():
  """The separable RoIAlign against a direct loop over torchvision's samples (aligned, adaptive),
  including a 1-pixel region (zero-size box: no samples, output 0) and boxes touching the border."""
  rs = np.random.default_rng(1)
  feat = rs.normal(size=(1, 7, 9, 2)).astype(np.float32)
  regions = np.array([[[0, 6, 0, 8], [2, 4, 1, 7], [3, 3, 5, 5], [5, 6, 0, 2]]], np.int32)
  r = 3
  got = np.asarray(gpstoken.roi_align(jnp.asarray(feat), jnp.asarray(regions), r))

  def sample(y, x):
    h, w = feat.shape[1:3]
    if y < -1 or y > h or x < -1 or x > w:
      return np.zeros(2)
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = min(int(y), h - 1), min(int(x), w - 1)
    y = float(y0) if y0 >= h - 1 else y
    x = float(x0) if x0 >= w - 1 else x
    y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
    ly, lx = y - y0, x - x0
    f = feat[0]
    return ((1 - ly) * (1 - lx) * f[y0, x0] + (1 - ly) * lx * f[y0, x1] + ly * (1 - lx) * f[y1, x0]
            + ly * lx * f[y1, x1])

  for s, (r0, r1, c0, c1) in enumerate(regions[0]):
    ys, xs, hh, ww = r0 - 0.5, c0 - 0.5, r1 - r0, c1 - c0
    gh, gw = int(np.ceil(hh / r)), int(np.ceil(ww / r))
    for p in range(r):
      for q in range(r):
        acc = sum(sample(ys + p * hh / r + (i + 0.5) * hh / r / gh, xs + q * ww / r + (j + 0.5) * ww / r / gw)
                  for i in range(gh) for j in range(gw))
        want = np.asarray(acc) / max(gh * gw, 1) if gh * gw else np.zeros(2)
        np.testing.assert_allclose(got[0, s, p, q], want, atol=1e-5, err_msg=f"region {s} bin {p},{q}")
  assert np.all(got[0, 2] == 0)  # the 1-pixel region: zero-size box


def test_renderer_is_the_release_kernel_with_its_support():
  """gaussian_render with dmax against a loop transcription of gscuda/gs.cu `_gs_render_cuda`:
  pixel (i, j) at (2j/(W-1) - 1, 2i/(H-1) - 1), v = exp(-(dx^2/sx^2 - 2 rho dx dy/(sx sy) +
  dy^2/sy^2) / (2 (1 - rho^2))), skipped where |dx| > dmax sx or |dy| > dmax sy."""
  sig = np.array([[0.2, 0.1, 0.5], [0.05, 0.3, -0.7], [0.4, 0.4, 0.0]], np.float32)
  mu = np.array([[0.1, -0.2], [-0.6, 0.5], [0.9, 0.9]], np.float32)
  col = np.array([[1.0, -2.0], [0.5, 0.25], [3.0, 1.0]], np.float32)
  h, w, dmax = 6, 7, 3.0
  want = np.zeros((h, w, 2))
  for i in range(h):
    for j in range(w):
      u, v = 2 * j / (w - 1) - 1, 2 * i / (h - 1) - 1
      for (sx, sy, rho), (x, y), c in zip(sig, mu, col):
        dx, dy = u - x, v - y
        if abs(dx) > dmax * sx or abs(dy) > dmax * sy:
          continue
        q = dx * dx / sx / sx - 2 * rho * dx * dy / sx / sy + dy * dy / sy / sy
        want[i, j] += np.exp(-q / (2 * (1 - rho * rho))) * c
  got = gaussian_render.render(jnp.asarray(sig), jnp.asarray(mu), jnp.asarray(col), h, w, dmax)
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)
  assert np.any(np.asarray(gaussian_render.densities(jnp.asarray(sig), jnp.asarray(mu), h, w, None))
                != np.asarray(gaussian_render.densities(jnp.asarray(sig), jnp.asarray(mu), h, w, dmax)))


def test_missing_and_extra_keys_are_refused_by_name(tmp_path):
  flat, _ = common.read_checkpoint(WEIGHTS)
  cfg = G.infer_config(flat, num_gaussians=6, image_size=16)
  bad = {k: np.asarray(v) for k, v in flat.items() if k != "attnblocks.1.ln2.bias"}
  bad["attnblocks.0.extra.weight"] = np.zeros((2,), np.float16)
  bad["loss.discriminator.main.0.weight"] = np.zeros((2,), np.float16)  # dropped, as the release
  path = str(tmp_path / "bad.safetensors")
  save_file(bad, path)
  with pytest.raises(ValueError) as e:
    G.load(path, cfg)
  assert "blocks.1.norm2.bias" in str(e.value) and "attnblocks.0.extra.weight" in str(e.value)
  assert "missing" in str(e.value) and "unexpected" in str(e.value)
  assert "loss.discriminator" not in str(e.value) and "temb_proj" not in str(e.value)


@pytest.mark.parametrize("name", sorted(G.RELEASED))
def test_released_configs_have_the_release_state_dict_shapes(name):
  """Each released config, built abstractly, holds exactly the tensors the release's state dict has
  (shapes recorded from its classes on torch's meta device), once converted."""
  with gzip.open(os.path.join(FIXTURES, "gpstoken_release_shapes.json.gz"), "rt") as f:
    shapes = json.load(f)[name]
  fake = {k: np.broadcast_to(np.float16(0), v) for k, v in shapes.items()}
  converted = G.convert(fake)
  abstract = api.build(G.RELEASED[name]).abstract_params()
  common.check_keys(common.state_shapes(abstract), converted, source=name)
  # dropped: the stem's unused temb_proj weight + bias (x2); the decoder's mid attention q, k, v,
  # proj_out (weight + bias each: 8 tensors) become 4 (qkv, qkv_bias, out, out_bias).
  assert len(shapes) == len(converted) + 4 + 4
  assert sum("temb_proj" in k for k in shapes) == 4


def test_convert_dispatch_then_the_tokenizer_contract_runs():
  """`convert.convert("gpstoken", ...)` (tools/convert.py's path) gives a tokenizer whose encode
  (with the numpy partition) and decode run under jit; decode of the release's tokens equals
  (release decoder output + 1) / 2 clipped, through the renderer."""
  from jaxtok import convert
  assert "gpstoken" in convert.MODELS
  flat, _ = common.read_checkpoint(WEIGHTS)
  cfg = dict(G.infer_config(flat, num_gaussians=6, image_size=16), min_size=4)
  cfg, params = convert.convert("gpstoken", WEIGHTS, json.dumps(cfg))
  tok = api.build(cfg)
  io = _io()
  out = tok.encode(params, jnp.asarray(io["images"]))
  assert out.tokens.shape == (2, 6, 9) and np.all(np.isfinite(np.asarray(out.tokens)))
  img = np.asarray(tok.decode(params, jnp.asarray(io["tokens"])))
  model = nnx.merge(tok.graphdef, params)
  fmap = model.render(jnp.asarray(io["tokens"]))
  want = np.clip((np.asarray(model.decoder(fmap)) + 1) / 2, 0, 1)
  np.testing.assert_allclose(img, want, atol=1e-5)
