"""``python -m pvtv2`` (also what ``torchrun -m pvtv2`` runs)."""

import sys

from .cli import main

sys.exit(main())
