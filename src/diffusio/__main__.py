"""``python -m diffusio`` (so ``torchrun -m diffusio train ...`` works)."""

import sys

from diffusio.app.cli import main

sys.exit(main())
