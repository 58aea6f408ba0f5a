"""`ray job submit --working-dir . -- python jobs/ingest.py --config jobs/configs/ingest.yaml`"""

import sys

from artray.cli import main

if __name__ == "__main__":
    sys.exit(main(["corpus", "ingest", *sys.argv[1:]]))
