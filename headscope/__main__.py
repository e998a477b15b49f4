"""``python -m headscope`` runs the command line, so ``torchrun -m headscope CMD ...`` shards CMD."""

import sys

from headscope.cli import main

if __name__ == "__main__":
    sys.exit(main())
