"""Run with ``diffusio bench overhead`` or ``python bench/overhead.py``."""

import sys

from diffusio.bench.overhead import main

sys.exit(main())
