"""``python -m sheep.daemon``: the same as the ``sheep`` command."""
import sys

from sheep.daemon.main import main  # patches gevent before anything else is imported

sys.exit(main())
