"""`eatai.zoo`: the model zoo (robust models by RobustBench id, downloaded without robustbench)."""
from .models.download import ChecksumError, Source, ZooDownloadError, cache_dir, file_sha256
from .models.zoo import (
           NO_NORM,
           ZOO,
           PaperResult,
           ZooEntry,
           build_zoo_model,
           get_entry,
           is_zoo_id,
           load_zoo_model,
           register_entry,
           zoo_download,
           zoo_entries,
)

__all__ = ['ZOO', 'ZooEntry', 'PaperResult', 'Source', 'NO_NORM', 'zoo_entries', 'get_entry', 'register_entry',
           'zoo_download', 'load_zoo_model', 'build_zoo_model', 'is_zoo_id', 'cache_dir', 'ZooDownloadError',
           'ChecksumError', 'file_sha256']
