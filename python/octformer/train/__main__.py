"""``python -m octformer.train [CONFIG] [KEY=VALUE ...]`` (what torchrun launches)."""

import sys

from octformer.train.trainer import main

sys.exit(main())
