import numpy as np
import pytest

from jaxtok.samplers import schedules


@pytest.mark.parametrize("name", ["cosine", "arccos", "linear", "pow:2"])
def test_endpoints(name):
  fn = schedules.get(name)
  assert abs(float(fn(0.0)) - 1.0) < 1e-12 and abs(float(fn(1.0))) < 1e-12


def test_hand_values():
  assert float(schedules.arccos(0.5)) == pytest.approx(2 / 3)  # arccos(1/2) = pi/3
  assert float(schedules.cosine(0.5)) == pytest.approx(np.sqrt(0.5))
  # K = 12, 4 steps, cosine: floor(12 cos(pi/8)) = 11, floor(12 cos(pi/4)) = 8, floor(12 * 0.383) = 4
  np.testing.assert_array_equal(schedules.mask_counts("cosine", 12, 4), [11, 8, 4, 0])
  # arccos: floor(12 * arccos(r) / (pi/2)) at r = 1/4, 1/2, 3/4 -> 10.39, 8, 5.39
  np.testing.assert_array_equal(schedules.mask_counts("arccos", 12, 4), [10, 8, 5, 0])


@pytest.mark.parametrize("k,steps", [(16, 8), (5, 5), (256, 12), (3, 1)])
def test_mask_counts(k, steps):
  c = schedules.mask_counts("cosine", k, steps)
  assert c[-1] == 0
  assert np.all(np.diff(np.concatenate([[k], c])) <= -1)


def test_table_rows_and_few_unknown():
  t = schedules.mask_count_table("cosine", 12, 4)
  assert t.shape == (13, 4)
  np.testing.assert_array_equal(t[12], schedules.mask_counts("cosine", 12, 4))
  np.testing.assert_array_equal(t[11], [10, 7, 4, 0])  # floor(11 * cos(...)) = 10.16, 7.78, 4.21
  np.testing.assert_array_equal(t[2], [1, 0, 0, 0])  # fewer unknown than steps: one per step
  np.testing.assert_array_equal(t[0], [0, 0, 0, 0])


def test_disa_hand_values():
  # K = 5, 50 -> 5 (span 45). linear: 45 * (4, 3, 2, 1, 0) / 4 = 45, 33.75, 22.5, 11.25, 0
  np.testing.assert_array_equal(schedules.disa_steps("linear", 5, 50, 5), [50, 38, 27, 16, 5])
  # cosine: 45 (cos(pi k / 4) + 1) / 2 = 45, 38.41, 22.5, 6.59, 0
  np.testing.assert_array_equal(schedules.disa_steps("cosine", 5, 50, 5), [50, 43, 27, 11, 5])
  np.testing.assert_array_equal(schedules.disa_steps("two-stage", 5, 50, 5), [50, 50, 50, 5, 5])
  np.testing.assert_array_equal(schedules.disa_steps("constant", 5, 50, 5), [5] * 5)
  # DiSA's MAR setting: 64 iterations, 50 -> 5: 1733 head steps instead of 3200.
  assert schedules.disa_steps("linear", 64, 50, 5).sum() == 1733
  np.testing.assert_array_equal(schedules.disa_steps("linear", 1, 50, 5), [50])


def test_errors():
  with pytest.raises(ValueError, match="schedule"):
    schedules.get("nope")
  with pytest.raises(ValueError, match="steps must be an int >= 1, got 0"):
    schedules.mask_counts("cosine", 4, 0)
  with pytest.raises(ValueError, match="steps must be <= num_tokens=4, got 5"):
    schedules.mask_counts("cosine", 4, 5)
  with pytest.raises(ValueError, match="strategy must be one of"):
    schedules.disa_steps("exp", 4, 50, 5)
  with pytest.raises(ValueError, match="lower must be <= upper=5, got 50"):
    schedules.disa_steps("linear", 4, 5, 50)
  with pytest.raises(ValueError, match="num_iters must be an int >= 1, got 0"):
    schedules.disa_steps("linear", 0, 50, 5)
