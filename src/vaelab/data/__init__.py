"""Datasets for vaelab: known image datasets, folders of images, downloads and checks.

``load_dataset(name, split)`` returns a :class:`Dataset` holding uint8 images (N, C, H, W)
and int64 labels in memory. Known names are listed by :func:`dataset_names`; any folder of
images works as ``folder:PATH``.
"""

from .dataset import (
    FOLDER_DESCRIPTION,
    Dataset,
    check_dataset,
    dataset_names,
    default_data_dir,
    describe_datasets,
    download_dataset,
    load_dataset,
    resolve_data_dir,
    splits,
)

__all__ = [
    "Dataset",
    "FOLDER_DESCRIPTION",
    "check_dataset",
    "dataset_names",
    "default_data_dir",
    "describe_datasets",
    "download_dataset",
    "load_dataset",
    "resolve_data_dir",
    "splits",
]
