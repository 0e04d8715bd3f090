"""`python -m vaelab.cli …`: the same as `python -m vaelab …`."""

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
