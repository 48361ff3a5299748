"""The ``sheep`` command: parse the command line, run one `Sheep` until SIGTERM or SIGINT.

``monkey.patch_all()`` is this module's first statement (before anything imports ssl,
sockets or threads); nothing else in the daemon patches.
"""
from gevent import config, monkey

monkey.patch_all()
# gevent records every greenlet's spawning stack by default (~6 us per spawn); the
# daemon never reads it.
config.track_greenlet_tree = False

import logging  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402

import gevent  # noqa: E402

from common.errors import SheepError, StoreMismatch  # noqa: E402
from sheep.daemon.config import parse_args  # noqa: E402
from sheep.daemon.gc_tuning import tune_gc  # noqa: E402
from sheep.daemon.malloc import keep_large_buffers, trim_when_idle  # noqa: E402
from sheep.daemon.node import Sheep  # noqa: E402

log = logging.getLogger("sheep")


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level, logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kazoo").setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    _setup_logging(config.log_level)
    keep_large_buffers()
    # A SheepError ending a greenlet or a pool task is an answer its caller handles
    # (a replica that is down, a full disk), not a crash: no traceback in the log.
    hub = gevent.get_hub()
    hub.NOT_ERROR = (*hub.NOT_ERROR, SheepError)
    try:
        node = Sheep(config)
        node.start()
    except StoreMismatch as exc:
        print(f"sheep: {exc.message}", file=sys.stderr)
        return 1
    except (SheepError, OSError) as exc:
        print(f"sheep: cannot start: {exc}", file=sys.stderr)
        return 1
    tune_gc()
    trim_when_idle()
    gevent.signal_handler(signal.SIGTERM, lambda: gevent.spawn(node.stop))
    gevent.signal_handler(signal.SIGINT, lambda: gevent.spawn(node.stop))
    node.stopped.wait()
    log.info("node=%s stopped", node.node_id)
    return node.exit_code


if __name__ == "__main__":
    sys.exit(main())
