"""``python -m collie``: the same as the ``collie`` command."""
import sys

from collie.cli import main

sys.exit(main())
