"""`ray job submit --working-dir . -- python jobs/train.py --config jobs/configs/train-longclip.yaml`"""

import sys

from artray.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
