"""Entry point for ``python -m puma_lightning``."""

import sys

from puma_lightning.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
