"""Data: the bundled photographs, numpy preprocessing, grain pipelines, tfds sources, token datasets."""
from jaxtok.data import photos, pipeline, preprocess, tfds_source

__all__ = ["photos", "pipeline", "preprocess", "tfds_source"]
