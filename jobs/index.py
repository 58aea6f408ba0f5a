"""`ray job submit --working-dir . -- python jobs/index.py --config jobs/configs/index.yaml`"""

import sys

from artray.cli import main

if __name__ == "__main__":
    sys.exit(main(["index", "build", *sys.argv[1:]]))
