"""The worker threads a Raft loop hands its blocking work to (the WAL's writes and fsyncs, on
the disk thread; image encoding, on the snapshot thread), made by a factory the loop is given
as it is given its `Clock`.

The member process gives it `one_thread`, a real `ThreadPoolExecutor`. Tests on virtual time
give it `coordinator.testing.virtual_time.counted_thread`, whose jobs the virtual loop counts
(its clock stands still while one runs): the code under test runs unchanged, and no other
executor in the process is touched.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable

ThreadFactory = Callable[[str], concurrent.futures.Executor]
"""`factory(name)`: a new executor running the jobs submitted to it one at a time, in the
order submitted, on a thread named after `name`. Whoever calls the factory owns what it
returns, and shuts it down."""


def one_thread(name: str) -> concurrent.futures.Executor:
    return concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
