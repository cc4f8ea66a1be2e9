"""Calibration for int8: datasets, streaming activation statistics, thresholds and the table.

Numpy and pydantic only at import time; Pillow is imported when the first image is decoded.
"""

from bmbuild.calib.config import CalibrationConfig, Preprocess
from bmbuild.calib.dataset import (
    SampleLoader,
    SampleRef,
    content_files,
    iter_batches,
    list_samples,
    load_sample,
    split_samples,
)
from bmbuild.calib.histogram import StatsCollector, TensorStats
from bmbuild.calib.methods import METHODS, compute_threshold
from bmbuild.calib.table import format_table, read_table, write_table

__all__ = [
    "CalibrationConfig",
    "Preprocess",
    "SampleLoader",
    "SampleRef",
    "content_files",
    "iter_batches",
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
