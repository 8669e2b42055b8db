"""Whole image sets in memory, for the tools that tokenize or evaluate a dataset at once.

Each loader returns (images float32 [N, S, S, 3] in [0, 1], labels int32 [N], meta dict):
  photo_crops   random crops of the bundled photographs' training parts, through the training data
                code (`pipeline.Pipeline` over `photos.PhotoSource`); label = the photo's index;
  folder_images every image under a folder, fitted to S (`jaxtok.eval.images.FITS`); label = index
                of the sorted class subfolder (`folder/<class>/x.png`), -1 for files directly in it;
  tfds_images   a prepared tensorflow-datasets split read without TensorFlow, short side resized
                and centre-cropped; label = the record's `label` (-1 when absent).
The meta dict describes the source (it is written beside the tokens or into a report).
"""
from __future__ import annotations

import math
import os

import numpy as np


def photo_crops(size: int, count: int, seed: int, batch_size: int) -> tuple[np.ndarray, np.ndarray, dict]:
  """`count` random crops of the training photographs: (images, labels, meta)."""
  from jaxtok.data import photos, pipeline  # pylint: disable=g-import-not-at-top
  train, _ = photos.split_photos(photos.bundled_photos())
  pipe = pipeline.Pipeline(photos.PhotoSource(train), batch_size=batch_size, seed=seed,
                           preprocess=pipeline.image_preprocess(size, augment="random_resized_crop"),
                           shard=(0, 1), num_threads=0, prefetch=0)
  imgs, labels = [], []
  for _ in range(math.ceil(count / batch_size)):
    batch = next(pipe)
    imgs.append(batch["image"])
    labels.append(batch["label"])
  meta = {"source": "photos", "num_classes": len(train), "seed": seed,
          "augment": "random_resized_crop of the training part of each photo"}
  return np.concatenate(imgs)[:count], np.concatenate(labels)[:count], meta


def folder_images(folder: str, size: int, count: int | None, fit: str, *,
                  flag: str = "--folder") -> tuple[np.ndarray, np.ndarray, dict]:
  """The first `count` (None: all) images of `folder` in sorted order: (images, labels, meta)."""
  from jaxtok.eval import images as img_lib  # pylint: disable=g-import-not-at-top
  paths = img_lib.list_images(folder, flag=flag)[:count]
  labels, classes = img_lib.folder_labels(paths)
  meta = {"source": "folder", "folder": os.path.abspath(folder), "names": paths,
          "class_names": classes, "num_classes": len(classes), "fit": fit}
  return img_lib.load_images(folder, paths, size, fit), labels, meta


def tfds_images(name: str, split: str, data_dir: str | None, size: int,
                count: int | None) -> tuple[np.ndarray, np.ndarray, dict]:
  """The first `count` (None: all) records of a prepared tfds split: (images, labels, meta)."""
  from jaxtok.data import pipeline, tfds_source  # pylint: disable=g-import-not-at-top
  src = tfds_source.source(name, split=split, data_dir=data_dir)
  n = len(src) if count is None else min(count, len(src))
  images = pipeline.eval_images(src, image_size=size, count=n)
  labels = np.asarray([int(src[i].get("label", -1)) if isinstance(src[i], dict) else -1
                       for i in range(n)], np.int32)
  meta = {"source": "tfds", "tfds_name": name, "split": split,
          "num_classes": int(labels.max(initial=-1)) + 1}
  return images, labels, meta
