"""`python -m visapp.export ...` (see visapp.export.cli)."""
import sys

from .cli import main

sys.exit(main())
