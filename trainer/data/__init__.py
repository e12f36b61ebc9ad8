"""Data loaders: official IDX files (local or downloaded), Kaggle-style CSV, folders of images."""

from trainer.data.dataset import DataError, Dataset, Split, stratified_split

__all__ = ["DataError", "Dataset", "Split", "stratified_split"]
