"""GPSToken: the splatting renderer against its closed form and finite differences, the partition's
exact cover, the generation order, the model's contract and the tiny config's falling loss."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx


from jaxtok.configs import gpstoken as gps_config
from jaxtok.data import photos
from jaxtok.tokenizers import api, gaussian_render, gps_partition, gpstoken
from tests.tokenizers.fit import fixed_batch_losses


def test_single_gaussian_matches_closed_form_at_every_pixel():
  sx, sy, rho, x, y = 0.3, 0.5, 0.4, 0.1, -0.2
  f = np.array([2.0, -1.0])
  out = np.asarray(gaussian_render.render(jnp.array([[sx, sy, rho]]), jnp.array([[x, y]]),
                                          jnp.array([f]), 7, 5))
  assert out.shape == (7, 5, 2) and out.dtype == np.float32
  for i in range(7):
    for j in range(5):
      u, v = 2 * j / 4 - 1, 2 * i / 6 - 1
      dx, dy = u - x, v - y
      cov = np.array([[sx**2, rho * sx * sy], [rho * sx * sy, sy**2]])
      d = np.array([dx, dy])
      g = np.exp(-0.5 * d @ np.linalg.inv(cov) @ d)  # the peak-normalised density
      np.testing.assert_allclose(out[i, j], g * f, rtol=1e-5, atol=1e-7)
  # The cut-off zeroes pixels beyond dmax standard deviations on either axis.
  cut = np.asarray(gaussian_render.render(jnp.array([[sx, sy, rho]]), jnp.array([[x, y]]),
                                          jnp.array([f]), 7, 5, dmax=1.0))
  for i in range(7):
    for j in range(5):
      inside = abs(2 * j / 4 - 1 - x) <= sx and abs(2 * i / 6 - 1 - y) <= sy
      np.testing.assert_allclose(cut[i, j], out[i, j] if inside else 0.0, rtol=1e-6)
  # Two Gaussians add.
  two = gaussian_render.render(jnp.array([[sx, sy, rho], [0.2, 0.2, 0.0]]),
                               jnp.array([[x, y], [0.5, 0.5]]), jnp.array([f, [1.0, 1.0]]), 7, 5)
  one = gaussian_render.render(jnp.array([[0.2, 0.2, 0.0]]), jnp.array([[0.5, 0.5]]),
                               jnp.array([[1.0, 1.0]]), 7, 5)
  np.testing.assert_allclose(two, out + one, rtol=1e-5, atol=1e-7)


def test_renderer_gradients_match_central_differences_in_float64():
  rs = np.random.default_rng(0)
  with jax.enable_x64(True):
    sig = jnp.asarray(np.stack([rs.uniform(0.2, 0.6, 3), rs.uniform(0.2, 0.6, 3),
                                rs.uniform(-0.6, 0.6, 3)], -1), jnp.float64)
    mu = jnp.asarray(rs.uniform(-0.7, 0.7, (3, 2)), jnp.float64)
    feat = jnp.asarray(rs.normal(size=(3, 2)), jnp.float64)
    w = jnp.asarray(rs.normal(size=(6, 6, 2)), jnp.float64)
    loss = jax.jit(lambda s, m, f: jnp.sum(w * gaussian_render.render(s, m, f, 6, 6)))
    grads = jax.grad(loss, argnums=(0, 1, 2))(sig, mu, feat)
    assert grads[0].dtype == jnp.float64
    h = 1e-6
    for k, arg in enumerate((sig, mu, feat)):
      assert np.all(np.isfinite(np.asarray(grads[k])))
      for idx in np.ndindex(arg.shape):
        args = [sig, mu, feat]
        args[k] = arg.at[idx].add(h)
        up = loss(*args)
        args[k] = arg.at[idx].add(-h)
        fd = (up - loss(*args)) / (2 * h)
        np.testing.assert_allclose(grads[k][idx], fd, rtol=1e-6, atol=1e-8)


def _cover_counts(regions, h, w):
  count = np.zeros((h, w), int)
  for r0, r1, c0, c1 in regions:
    count[r0:r1 + 1, c0:c1 + 1] += 1
  return count


@pytest.mark.parametrize("source,size,num,min_size", [("photo0", 64, 16, 8), ("photo1", 48, 12, 4),
                                                      ("noise", 32, 20, 2), ("flat", 16, 8, 2)])
def test_partition_covers_every_pixel_exactly_once(source, size, num, min_size):
  rs = np.random.default_rng(1)
  if source.startswith("photo"):
    pic = photos.bundled_photos()[int(source[-1])]
    img = pic[:size * 3:3, :size * 3:3].astype(np.float64) / 255.0
  elif source == "noise":
    img = rs.uniform(size=(size, size, 3))
  else:
    img = np.full((size, size, 3), 0.5)
  regions = gps_partition.partition_batch(img[None], num, min_size, 2.5)[0]
  assert regions.shape == (num, 4) and regions.dtype == np.int32
  np.testing.assert_array_equal(_cover_counts(regions, size, size), 1)
  g = gps_partition.regions_to_gaussians(regions, size, size)
  assert g.shape == (num, 5) and np.all(g[:, :2] > 0) and np.all(np.abs(g[:, 3:]) <= 1)


def test_partition_splits_textured_half_first_and_initial_gaussians_hand_values():
  # Left half textured, right half flat: after the first (column) split the textured half is more
  # complex, so the second split cuts the left half.
  rs = np.random.default_rng(2)
  grey = np.full((16, 16), 0.5)
  grey[:, :8] = rs.uniform(size=(16, 8))
  regions = gps_partition.partition(grey, 3, min_size=2)
  assert sorted(map(tuple, regions)) == [(0, 7, 0, 7), (0, 15, 8, 15), (8, 15, 0, 7)]
  g = gps_partition.regions_to_gaussians(np.array([[0, 7, 8, 15]]), 16, 16)[0]
  np.testing.assert_allclose(g, [7 / 16 * 2 / 3, 7 / 16 * 2 / 3, 0.0, 23 / 15 - 1, 7 / 15 - 1],
                             rtol=1e-6)
  with pytest.raises(ValueError, match="cannot split"):
    gps_partition.partition(grey, 200, min_size=8)


def test_generation_order_layout_then_texture():
  tokens = jnp.array([[[0.1, 0.1, 0.0, 0.5, 0.5, 1.0], [0.1, 0.1, 0.0, -0.5, 0.5, 2.0],
                       [0.1, 0.1, 0.0, 0.9, -0.5, 3.0]]])
  layout, texture = gpstoken.layout_then_texture(tokens)
  assert layout.shape == (1, 3, 5) and texture.shape == (1, 3, 1)
  np.testing.assert_array_equal(texture[0, :, 0], [3.0, 2.0, 1.0])  # rows first, then columns
  back = gpstoken.from_layout_texture(layout, texture)
  # The Gaussians are a set: the reordered tokens render the same feature map.
  render = lambda t: gaussian_render.render(*gpstoken.split_tokens(t), 8, 8)
  np.testing.assert_allclose(render(back), render(tokens), rtol=1e-6)


def test_refine_with_zero_delta_is_identity():
  init = jnp.array([[0.3, 0.2, 0.0, -0.4, 0.7]])
  np.testing.assert_allclose(gpstoken.refine(init, jnp.zeros_like(init)), init, atol=1e-6)
  out = gpstoken.refine(init, jnp.full_like(init, 50.0))
  assert np.all(np.asarray(out[:, :2]) <= 1) and np.all(np.asarray(out[:, 2:]) <= 1)


@pytest.fixture(scope="module")
def tiny():
  c = gps_config.get_config("tiny")
  tok = api.build(c.model)
  rs = np.random.default_rng(0)
  params = jax.tree.map(lambda a: jnp.asarray(0.1 * rs.normal(size=a.shape), a.dtype),
                        tok.abstract_params())
  return tok, params


def test_contract_encode_decode_and_jit(tiny):
  tok, params = tiny
  images = jnp.asarray(np.random.default_rng(3).uniform(size=(2, 16, 16, 3)), jnp.float32)
  out = tok.encode(params, images)
  assert out.tokens.shape == (2, 8, 9) and out.tokens.dtype == jnp.float32
  assert np.all(np.asarray(out.tokens[..., :2]) > 0) and np.all(np.abs(np.asarray(out.tokens[..., 2])) < 1)
  img = tok.decode(params, out.tokens)
  assert img.shape == (2, 16, 16, 3) and float(img.min()) >= 0 and float(img.max()) <= 1
  with pytest.raises(ValueError, match="all 8 Gaussians"):
    tok.encode(params, images, num_tokens=4)


@pytest.mark.slow
def test_tiny_config_loss_falls_on_a_fixed_batch(tiny):
  """The tiny config's model (the tiny training recipe's Adam on l1 + model losses) fits one batch:
  the same-rng loss falls. (tools/train.py with configs/gpstoken.py:tiny runs the same contract.)
  The images are smooth (4 x 4 noise upsampled bilinearly): the release's encoder sees the image
  only through r x r RoI bins per region, which average pixel noise away, so white noise is not a
  reconstructable target for it."""
  tok, params = tiny[:2]
  coarse = jnp.asarray(np.random.default_rng(12).uniform(size=(4, 4, 4, 3)), jnp.float32)
  images = jax.image.resize(coarse, (4, 16, 16, 3), "linear")
  losses, final = fixed_batch_losses(tok, params, images, 50)
  assert np.all(np.isfinite(losses))
  assert losses[-3:].mean() < 0.5 * losses[:3].mean(), losses


def test_bad_inputs_raise_naming_the_argument():
  base_cfg = dict(gps_config.get_config("tiny").model)
  build = lambda **kw: nnx.eval_shape(lambda: gpstoken.make_model(dict(base_cfg, **kw),
                                                                 rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match="unknown GPSToken config key"):
    build(bogus=1)
  with pytest.raises(ValueError, match="render_size"):
    build(render_size=4)
  with pytest.raises(ValueError, match="min_size must be >= 2"):
    build(min_size=1)
  with pytest.raises(ValueError, match="sigmas must be"):
    gaussian_render.render(jnp.ones((2, 2)), jnp.ones((2, 2)), jnp.ones((2, 1)), 4, 4)
  with pytest.raises(ValueError, match="a rendered side must be >= 2"):
    gaussian_render.pixel_coords(1)
