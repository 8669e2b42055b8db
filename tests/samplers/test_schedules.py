import numpy as np
import pytest

from jaxtok.samplers import schedules


@pytest.mark.parametrize("name", ["cosine", "arccos", "linear", "pow:2"])
def test_endpoints(name):
  fn = schedules.get(name)
  assert abs(float(fn(0.0)) - 1.0) < 1e-12 and abs(float(fn(1.0))) < 1e-12


@pytest.mark.parametrize("k,steps", [(16, 8), (5, 5), (256, 12), (3, 1)])
def test_mask_counts(k, steps):
  c = schedules.mask_counts("cosine", k, steps)
  assert c[-1] == 0
  assert np.all(np.diff(np.concatenate([[k], c])) <= -1)


def test_errors():
  with pytest.raises(ValueError, match="schedule"):
    schedules.get("nope")
  with pytest.raises(ValueError, match="steps"):
    schedules.mask_counts("cosine", 4, 0)
