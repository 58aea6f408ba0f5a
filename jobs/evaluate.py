"""`ray job submit --working-dir . -- python jobs/evaluate.py captions --config jobs/configs/evaluate-captions.yaml`

The first argument is the `artray evaluate` sub-command: `captions`, `retrieval` or `runs`.
"""

import sys

from artray.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
