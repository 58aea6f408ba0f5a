"""`ray job submit --working-dir . -- python jobs/evaluate_retrieval.py --config jobs/configs/evaluate-retrieval.yaml`"""

import sys

from artray.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", "retrieval", *sys.argv[1:]]))
