"""``python -m diffusio`` (so ``torchrun -m diffusio train ...`` works)."""

import sys

from .cli import main

sys.exit(main())
