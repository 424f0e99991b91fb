"""`python -m worker` is `lstm-worker`."""

import sys

from worker.cli import main

sys.exit(main())
