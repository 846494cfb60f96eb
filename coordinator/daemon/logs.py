"""How a member process logs: one line per record on stderr (UTC time, level, the member's
name, logger, message)."""

from __future__ import annotations

import logging
import sys
import time


class _MemberLogFormatter(logging.Formatter):
    """One line per record: UTC time, level, member, logger, message (and a traceback)."""

    def __init__(self, member: str) -> None:
        super().__init__(
            f"%(asctime)s.%(msecs)03dZ %(levelname)-7s {member} %(name)s: %(message)s",
            datefmt="%Y-%m-%dT%H:%M:%S",
        )
        self.converter = time.gmtime


def configure_logging(member: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_MemberLogFormatter(member))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("grpc").setLevel(logging.WARNING)
