"""Workload tokens in the client (`coordinator.client._config.TokenFile`): sent as
`authorization: Bearer ...`, read again when the kubelet swaps the projected file (a symlink
flip, as `..data` does), refused without TLS, and a missing file named."""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import pytest

from coordinator.client import Client, InvalidArgument
from coordinator.client._config import TokenFile, token_credentials


def metadata(plugin: TokenFile) -> tuple[tuple[tuple[str, str], ...], Exception | None]:
    got: list[tuple[tuple[tuple[str, str], ...], Exception | None]] = []
    plugin(None, lambda md, err: got.append((md, err)))
    (answer,) = got
    return answer


def test_the_token_is_sent_and_reread_when_the_kubelet_swaps_the_file(tmp_path: Path) -> None:
    # The kubelet's layout: token -> ..data/token, ..data -> a timestamped directory.
    first, second = tmp_path / "..2026_1", tmp_path / "..2026_2"
    first.mkdir()
    second.mkdir()
    (first / "token").write_text("one\n")
    (second / "token").write_text("two\n")
    (tmp_path / "..data").symlink_to(first.name)
    (tmp_path / "token").symlink_to("..data/token")
    plugin = TokenFile(tmp_path / "token")
    assert metadata(plugin) == ((("authorization", "Bearer one"),), None)
    assert metadata(plugin) == ((("authorization", "Bearer one"),), None)
    (tmp_path / "..data_tmp").symlink_to(second.name)
    os.replace(tmp_path / "..data_tmp", tmp_path / "..data")  # atomic, as the kubelet does
    assert metadata(plugin) == ((("authorization", "Bearer two"),), None)


def test_an_unreadable_token_fails_the_call_with_the_file_named(tmp_path: Path) -> None:
    plugin = TokenFile(tmp_path / "gone")
    md, err = metadata(plugin)
    assert md == () and isinstance(err, InvalidArgument) and "gone" in str(err)
    (tmp_path / "empty").write_text("\n")
    _, err = metadata(TokenFile(tmp_path / "empty"))
    assert err is not None and "empty" in str(err)


def test_a_token_needs_tls_and_an_existing_file(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("t")
    with pytest.raises(InvalidArgument, match="only sent over TLS"):
        Client(["127.0.0.1:1"], token_file=tmp_path / "token")
    tls = grpc.ssl_channel_credentials()
    with pytest.raises(InvalidArgument, match="no token file"):
        token_credentials(tls, tmp_path / "missing")
    with pytest.raises(InvalidArgument, match="cannot read the CA file"):
        Client.with_token(["127.0.0.1:1"], tmp_path / "token", tmp_path / "no-ca.pem")
