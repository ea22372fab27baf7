"""`python -m ema_yolo ...` is `ema-yolo ...`."""

import sys

from .cli import main

sys.exit(main())
