"""`ray job submit --working-dir . -- python jobs/recipe.py run culti2025 --corpus s3://… --out s3://…`

The first argument is the `artray recipe` sub-command: `run`, `show` or `list`.
"""

import sys

from artray.cli import main

if __name__ == "__main__":
    sys.exit(main(["recipe", *sys.argv[1:]]))
