"""Real public datasets (``broaden.datasets``): registry, checksum verification, loaders and builders.

``load_dataset(name)`` returns a tidy Arrow table (``id``, ``label`` 0..C-1, ``split``, raw fields) after
checking every file against its published SHA-256. See docs/datasets.md for the split rules and the
av-digits benchmark builder.
"""
from broaden.datasets.loaders import hash_split, image_array, images_from_column, load_dataset
from broaden.datasets.locate import cache_dir, resolve_data_dir
from broaden.datasets.registry import DATASETS, DatasetInfo, FileSpec, get_info
from broaden.datasets.verify import DatasetStatus, dataset_status, verify_dataset

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "DatasetStatus",
    "FileSpec",
    "cache_dir",
    "dataset_status",
    "get_info",
    "hash_split",
    "image_array",
    "images_from_column",
    "load_dataset",
    "resolve_data_dir",
    "verify_dataset",
]
