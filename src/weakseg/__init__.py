"""weakseg: medical image segmentation from weak annotations.

Nothing heavy runs at import time; sub-packages are imported on use.
"""

__version__ = "0.1.0"
