"""Calibration for int8: datasets, streaming activation statistics, thresholds and the table.

Names are imported lazily; Pillow only when the first image is decoded.
"""

import importlib
from typing import Any

# name -> submodule; resolved on first use so that importing the recipe models (config) does
# not import numpy.
_EXPORTS = {
    "CalibrationConfig": "config",
    "Preprocess": "config",
    "FeedLoader": "dataset",
    "InputFeed": "sources",
    "SampleLoader": "dataset",
    "SampleRef": "dataset",
    "content_files": "sources",
    "iter_batches": "dataset",
    "iter_feeds": "dataset",
    "list_feed_samples": "dataset",
    "list_samples": "dataset",
    "load_sample": "dataset",
    "split_samples": "dataset",
    "StatsCollector": "histogram",
    "TensorStats": "histogram",
    "METHODS": "methods",
    "compute_threshold": "methods",
    "format_table": "table",
    "read_table": "table",
    "write_table": "table",
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'bmbuild.calib' has no attribute {name!r}")
    return getattr(importlib.import_module(f"bmbuild.calib.{_EXPORTS[name]}"), name)


__all__ = [
    "CalibrationConfig",
    "Preprocess",
    "FeedLoader",
    "InputFeed",
    "SampleLoader",
    "SampleRef",
    "content_files",
    "iter_batches",
    "iter_feeds",
    "list_feed_samples",
    "list_samples",
    "load_sample",
    "split_samples",
    "StatsCollector",
    "TensorStats",
    "METHODS",
    "compute_threshold",
    "format_table",
    "read_table",
    "write_table",
]
