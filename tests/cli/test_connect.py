"""concordctl run right after the members were started, as the README's walkthrough does: a
member still opening its client port is waited for (`--connect-timeout`, 5 s by default),
not reported unreachable at the first refused connection."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from coordinator.cli.main import cli
from tests.cli.threaded import ThreadedMember, free_port, member_config


@pytest.mark.process  # a member that starts listening 2.5 s after the command: wall clock
def test_a_member_that_opens_its_port_late_is_waited_for(tmp_path: Path) -> None:
    endpoint = f"127.0.0.1:{free_port()}"
    results: list[Result] = []

    def put() -> None:
        results.append(CliRunner().invoke(cli, ["--endpoints", endpoint, "put", "k", "v"]))

    command = threading.Thread(target=put)
    command.start()
    # Later than the client library's own default grace (2 s), within concordctl's (5 s).
    time.sleep(2.5)
    member = ThreadedMember(member_config(tmp_path / "data", client_listen=endpoint))
    try:
        command.join(30)
        assert results, "concordctl did not finish"
        assert results[0].exit_code == 0, results[0].output
    finally:
        member.stop()


def test_the_connect_timeout_must_be_positive() -> None:
    res = CliRunner().invoke(cli, ["--connect-timeout", "0", "get", "k"])
    assert res.exit_code == 2
    assert "'--connect-timeout': 0.0 is not in the range" in res.output, res.output
