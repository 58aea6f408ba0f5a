"""`ray job submit --working-dir . -- python jobs/embed.py --config jobs/configs/embed.yaml`"""

import sys

from artray.cli import main

if __name__ == "__main__":
    sys.exit(main(["embed", *sys.argv[1:]]))
