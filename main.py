"""lit-rlhf entry point: `python main.py fit --config configs/demo/sft.yaml` (see README.md)."""

import sys

from lit_rlhf.cli import main

if __name__ == "__main__":
    sys.exit(main())
