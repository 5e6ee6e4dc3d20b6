"""Train a FlexBERT encoder: `python train.py configs/tiny.yaml [key=value ...]`, or under the
Composer launcher: `composer -n 8 train.py configs/base.yaml data_dir=...`."""

import sys

from flexbert.train.main import main

if __name__ == "__main__":
    sys.exit(main())
