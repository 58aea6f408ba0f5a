"""`ray job submit --working-dir . -- python jobs/report.py --config jobs/configs/report.yaml`"""

import sys

from artray.cli import main

if __name__ == "__main__":
    sys.exit(main(["report", *sys.argv[1:]]))
