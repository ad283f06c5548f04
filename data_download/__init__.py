"""Dataset downloader for the XAI medical-imaging workbook.

``python -m data_download list | get NAME... | get --starter | check`` (see ``--help``).
The registry (:mod:`data_download.registry`) lists every dataset's files, official URLs, checksums,
licence, citation and the layout produced under the data root (``XAI_DATA_ROOT``, else the per-user
cache folder). Importing this package does nothing else: no network, no files.
"""
from .registry import DATASETS, STARTER, Dataset, Remote

__all__ = ["DATASETS", "STARTER", "Dataset", "Remote"]
