"""`python -m vaelab …` is the `vaelab` command (what torchrun runs: torchrun --nproc-per-node N -m vaelab train …)."""

import sys

from .cli import main

sys.exit(main())
