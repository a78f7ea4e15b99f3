"""Data-set readers (registered in :data:`DATASETS`) and the 2D slice pipeline."""

from weakseg.data import acdc as _acdc  # noqa: F401  (registers readers)
from weakseg.data import monuseg as _monuseg  # noqa: F401
from weakseg.data import nifti as _nifti  # noqa: F401
from weakseg.data import phantom as _phantom  # noqa: F401
from weakseg.data.base import DATASETS, IGNORE_INDEX, Volume, VolumeSet

__all__ = ["DATASETS", "IGNORE_INDEX", "Volume", "VolumeSet"]
