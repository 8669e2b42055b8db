"""The bundled photographs: fixed held-out split, resumable per-process crops, random-access source."""
import numpy as np
import pytest

from jaxtok.data import photos


def test_photo_crops_resume_and_process_slices():
  rng = np.random.default_rng(0)
  ims = [rng.integers(0, 255, (40, 50, 3), np.uint8), rng.integers(0, 255, (64, 64, 3), np.uint8)]
  full = photos.PhotoCrops(ims, image_size=16, global_batch=4, seed=3, max_scale=2)
  batches = [next(full) for _ in range(3)]
  assert batches[0].shape == (4, 16, 16, 3) and batches[0].dtype == np.float32
  assert not np.array_equal(batches[0], batches[1])
  assert full.get_state() == {"step": 3}
  resumed = photos.PhotoCrops(ims, image_size=16, global_batch=4, seed=3, max_scale=2)
  resumed.set_state({"step": 2})
  np.testing.assert_array_equal(next(resumed), batches[2])
  halves = [photos.PhotoCrops(ims, image_size=16, global_batch=4, seed=3, max_scale=2,
                              process_index=i, process_count=2) for i in range(2)]
  np.testing.assert_array_equal(np.concatenate([next(h) for h in halves]), batches[0])
  with pytest.raises(ValueError, match="batch_size"):
    photos.PhotoCrops(ims, image_size=16, global_batch=3, seed=0, process_count=2)
  with pytest.raises(ValueError, match="at least 99x99"):
    photos.PhotoCrops(ims, image_size=99, global_batch=2, seed=0)
  with pytest.raises(ValueError, match="'step'"):
    full.set_state({})


def test_bundled_split_is_fixed_and_disjoint():
  train, held = photos.load_photos(16, 5, max_scale=2)
  train2, held2 = photos.load_photos(16, 5, max_scale=2)
  assert len(train) >= 3 and held.shape == (5, 16, 16, 3) and held.dtype == np.float32
  np.testing.assert_array_equal(held, held2)
  assert 0.0 <= held.min() and held.max() <= 1.0
  full = photos.bundled_photos()
  for t, p in zip(train, full):
    assert t.shape[1] == (3 * p.shape[1]) // 4 and np.array_equal(t, p[:, :t.shape[1]])
  # Every held-out crop is a crop of some held-out strip (the right quarter), at scale 1 or 2.
  _, strips = photos.split_photos(full)
  first = (held[0] * 255).round().astype(np.uint8)
  found = any(np.array_equal(first, s[::sc, ::sc][y:y + 16, x:x + 16])
              for s in strips[:1] for sc in (1, 2)
              for y in range(s[::sc].shape[0] - 15) for x in range(s[::sc, ::sc].shape[1] - 15))
  assert found
  with pytest.raises(ValueError, match="image_size"):
    photos.load_photos(0, 4)


def test_photo_source():
  ims = [np.zeros((5, 6, 3), np.uint8), np.ones((7, 8, 3), np.uint8)]
  src = photos.PhotoSource(ims)
  assert len(src) == 2 and src[1]["image"].shape == (7, 8, 3) and int(src[1]["label"]) == 1
  with pytest.raises(ValueError, match=r"photos\[0\] must be a uint8"):
    photos.PhotoSource([np.zeros((5, 6, 3), np.float32)])


def test_grid_crops_tile_each_photo_without_overlap():
  a = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
  b = np.full((4, 4, 3), 9, np.uint8)
  crops = photos.grid_crops([a, b], 2)
  # a: rows 0, 2 (row 4 left over) x columns 0, 2, 4 (column 6 left over); b: 2 x 2.
  assert crops.shape == (6 + 4, 2, 2, 3) and crops.dtype == np.uint8
  np.testing.assert_array_equal(crops[4], a[2:4, 2:4])
  np.testing.assert_array_equal(crops[6:], np.full((4, 2, 2, 3), 9, np.uint8))
  with pytest.raises(ValueError, match="at least 8 x 8"):
    photos.grid_crops([b], 8)


def test_unseen_photos_are_not_training_photos():
  unseen = photos.unseen_photos()
  assert [n for n, _ in unseen] == list(photos.UNSEEN_PHOTOS)
  bundled = photos.bundled_photos()
  for name, im in unseen:
    assert im.dtype == np.uint8 and im.ndim == 3 and im.shape[-1] == 3
    assert min(im.shape[:2]) >= 256, name
    assert not any(p.shape == im.shape and np.array_equal(p, im) for p in bundled), name
  assert photos.grid_crops([im for _, im in unseen], 256).shape == (24, 256, 256, 3)
