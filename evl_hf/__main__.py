"""`python -m evl_hf` runs the `evl-hf` command."""

import sys

from .commands import main


if __name__ == "__main__":
    sys.exit(main())
