"""``python -m weakseg`` (and ``torchrun ... -m weakseg train ...``): the command line."""

import sys

from weakseg.cli import main

sys.exit(main())
