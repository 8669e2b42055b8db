"""DevicePrefetch returns the wrapped iterator's batches in order and checkpoints the state of the
batch last returned, so a resume continues exactly after it (prefetched batches are re-read)."""
import pytest

from jaxtok.data.prefetch import DevicePrefetch


class Counter:
  """An iterator 0, 1, 2, ... with grain-style get_state/set_state."""

  def __init__(self):
    self.i = 0

  def __next__(self):
    self.i += 1
    return self.i - 1

  def get_state(self):
    return {"i": self.i}

  def set_state(self, state):
    self.i = state["i"]


@pytest.mark.parametrize("size", [0, 1, 3])
def test_order_state_and_resume(size):
  put_calls = []
  it = DevicePrefetch(Counter(), lambda x: put_calls.append(x) or 10 * x, size=size)
  assert [next(it) for _ in range(4)] == [0, 10, 20, 30]
  assert put_calls == list(range(4 + size))  # read `size` ahead of what was returned
  assert it.get_state() == {"i": 4}  # the state after batch 3, not after the last read
  resumed = DevicePrefetch(Counter(), lambda x: 10 * x, size=size)
  resumed.set_state(it.get_state())
  assert [next(resumed) for _ in range(3)] == [40, 50, 60]
  assert [next(it) for _ in range(3)] == [40, 50, 60]


def test_bad_size_is_refused():
  with pytest.raises(ValueError, match=r"size .* must be an int >= 0, got -1"):
    DevicePrefetch(Counter(), lambda x: x, size=-1)
