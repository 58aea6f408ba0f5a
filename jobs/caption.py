"""`ray job submit --working-dir . -- python jobs/caption.py --config jobs/configs/caption.yaml`"""

import sys

from artray.cli import main

if __name__ == "__main__":
    sys.exit(main(["caption", *sys.argv[1:]]))
