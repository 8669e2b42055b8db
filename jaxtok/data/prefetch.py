"""Batches transferred to the devices ahead of the step that uses them, with exact resume.

`DevicePrefetch(iterator, put, size)` keeps `size` batches already handed to `put` (e.g.
`jax.make_array_from_process_local_data`, which starts the host-to-device copy asynchronously), so
the next batch's host reading and transfer overlap the running step. The wrapped iterator runs
ahead of training by `size` batches; `get_state()` is therefore the iterator's state right after the
batch last *returned*, not the one last read, so a checkpoint taken after step n resumes at batch
n + 1 and no prefetched batch is skipped or repeated. size 0 is the plain iterator.
"""
from __future__ import annotations

import collections
from typing import Any, Callable, Iterator


class DevicePrefetch:
  """Iterator over put(batch) of `iterator` (which has get_state/set_state, as grain's), `size`
  batches ahead."""

  def __init__(self, iterator: Iterator[Any], put: Callable[[Any], Any], size: int = 2):
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
      raise ValueError(f"size (batches prefetched to the devices) must be an int >= 0, got {size!r}")
    self._it, self._put, self._size = iterator, put, size
    self._queue: collections.deque = collections.deque()
    self._state = iterator.get_state()

  def _read(self) -> None:
    local = next(self._it)
    self._queue.append((self._put(local), self._it.get_state()))

  def __iter__(self) -> "DevicePrefetch":
    return self

  def __next__(self) -> Any:
    if not self._queue:
      self._read()
    batch, self._state = self._queue.popleft()
    while len(self._queue) < self._size:
      self._read()
    return batch

  def get_state(self) -> Any:
    """The wrapped iterator's state after the last batch returned (what a checkpoint stores)."""
    return self._state

  def set_state(self, state: Any) -> None:
    """Continues after the batch whose state this is (prefetched batches are dropped)."""
    self._it.set_state(state)
    self._queue.clear()
    self._state = state
