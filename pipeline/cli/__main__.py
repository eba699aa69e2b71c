"""`python -m pipeline.cli`: the `campaign` command."""

import sys

from pipeline.cli import main

sys.exit(main())
