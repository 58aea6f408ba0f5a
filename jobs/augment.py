"""`ray job submit --working-dir . -- python jobs/augment.py --config jobs/configs/augment.yaml`"""

import sys

from artray.cli import main

if __name__ == "__main__":
    sys.exit(main(["augment", *sys.argv[1:]]))
