"""`ray job submit --working-dir . -- python jobs/import_corpus.py --config jobs/configs/import-artpedia.yaml`"""

import sys

from artray.cli import main

if __name__ == "__main__":
    sys.exit(main(["corpus", "import", *sys.argv[1:]]))
