"""Keys: unlock-key text, Shamir shares over GF(256), and the KeyStore's files and modes,
including every way an operator can get them wrong."""

from __future__ import annotations

import itertools
import os
import stat
import struct
import zlib
from pathlib import Path

import pytest

from coordinator.storage import (
    AlreadyInitializedError,
    FormatVersionError,
    InvalidUnlockKeyError,
    KeyFileCorruptError,
    KeyStore,
    KeyStoreError,
    LockedError,
    NotInitializedError,
    ShareError,
    UnknownKeyError,
    WrongUnlockKeyError,
    combine_unlock_key_shares,
    format_unlock_key,
    parse_unlock_key,
    split_unlock_key,
)
from coordinator.storage.shamir import _interpolate, _parse_share, gf_div, gf_mul

B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
PREFIX = "CONCORD-UNLOCK-"

# --- unlock keys as text -------------------------------------------------------------------


def test_unlock_key_text_round_trips_and_tolerates_case_and_blanks() -> None:
    raw = os.urandom(32)
    text = format_unlock_key(raw)
    assert text.startswith(PREFIX)
    assert parse_unlock_key(text) == raw
    assert parse_unlock_key("  " + text.lower() + "\n") == raw
    body = text[len(PREFIX) :]
    grouped = PREFIX + "-".join(body[i : i + 6] for i in range(0, len(body), 6))
    assert parse_unlock_key(grouped) == raw


def test_every_single_character_typo_is_caught() -> None:
    text = format_unlock_key(os.urandom(32))
    for pos in range(len(PREFIX), len(text)):
        for replacement in B32:
            if replacement == text[pos]:
                continue
            typo = text[:pos] + replacement + text[pos + 1 :]
            with pytest.raises(InvalidUnlockKeyError, match="typo"):
                parse_unlock_key(typo)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("SWMKEY-1-abcdef", "must start with"),
        (PREFIX + "AAAA", "characters after the prefix"),
        (PREFIX + "0" * 58, "only the letters"),
    ],
)
def test_malformed_unlock_keys_are_rejected_clearly(text: str, message: str) -> None:
    with pytest.raises(InvalidUnlockKeyError, match=message):
        parse_unlock_key(text)


def test_unlock_key_errors_do_not_echo_the_key() -> None:
    text = format_unlock_key(os.urandom(32))
    typo = text[:-3] + ("A" if text[-3] != "A" else "B") + text[-2:]
    with pytest.raises(InvalidUnlockKeyError) as info:
        parse_unlock_key(typo)
    assert text[len(PREFIX) : len(PREFIX) + 10] not in str(info.value)


# --- GF(256) and Shamir ------------------------------------------------------------------


def test_gf256_is_a_field() -> None:
    for a in range(1, 256):
        assert gf_mul(a, gf_div(1, a)) == 1
        assert gf_mul(a, 1) == a
    for a, b, c in [(0x57, 0x83, 0x1F), (3, 7, 200), (255, 254, 2)]:
        assert gf_mul(a, b) == gf_mul(b, a)
        assert gf_mul(a, b ^ c) == gf_mul(a, b) ^ gf_mul(a, c)
    assert gf_mul(0x57, 0x83) == 0xC1  # FIPS-197 section 4.2's worked example


def test_every_k_subset_recovers_the_key_and_no_smaller_one_does() -> None:
    key = format_unlock_key(os.urandom(32))
    shares = split_unlock_key(key, 3, 5)
    assert len(set(shares)) == 5
    for size in range(3, 6):
        for subset in itertools.combinations(shares, size):
            assert combine_unlock_key_shares(subset) == key
            assert combine_unlock_key_shares(reversed(subset)) == key
    for subset in itertools.combinations(shares, 2):
        with pytest.raises(ShareError, match=r"2 distinct share\(s\) given; this key needs 3"):
            combine_unlock_key_shares(subset)


def test_k_minus_one_shares_say_nothing_about_the_key() -> None:
    """With k-1 shares, every value of a key byte is consistent: for each guess there is a
    polynomial of degree < k through the shares and the guess."""
    key = format_unlock_key(os.urandom(32))
    a, b = (_parse_share(s) for s in split_unlock_key(key, 3, 5)[:2])
    points = [(a.x, a.y[:1]), (b.x, b.y[:1])]
    for guess in range(256):
        curve = [*points, (0, bytes([guess]))]
        assert _interpolate(curve, a.x) == a.y[:1]
        assert _interpolate(curve, 0) == bytes([guess])


def test_a_mistyped_share_is_rejected_by_its_checksum() -> None:
    key = format_unlock_key(os.urandom(32))
    shares = split_unlock_key(key, 2, 3)
    good = shares[1]
    for pos in range(good.rindex("-") + 1, len(good)):
        replacement = "A" if good[pos] != "A" else "B"
        typo = good[:pos] + replacement + good[pos + 1 :]
        with pytest.raises(ShareError, match="share #2 is mistyped"):
            combine_unlock_key_shares([shares[0], typo])


def test_a_share_with_a_mistyped_visible_index_is_rejected() -> None:
    shares = split_unlock_key(format_unlock_key(os.urandom(32)), 2, 3)
    forged = shares[0].replace("CONCORD-SHARE-1-", "CONCORD-SHARE-3-")
    with pytest.raises(ShareError, match="disagree"):
        combine_unlock_key_shares([forged, shares[1]])


def test_shares_of_different_splits_do_not_mix() -> None:
    key = format_unlock_key(os.urandom(32))
    one, two = split_unlock_key(key, 2, 3), split_unlock_key(key, 2, 3)
    with pytest.raises(ShareError, match="different splits"):
        combine_unlock_key_shares([one[0], two[1]])


def test_duplicates_count_once_and_conflicts_are_named() -> None:
    key = format_unlock_key(os.urandom(32))
    shares = split_unlock_key(key, 2, 4)
    with pytest.raises(ShareError, match="1 distinct"):
        combine_unlock_key_shares([shares[0], shares[0]])
    assert combine_unlock_key_shares([shares[0], shares[0], shares[2]]) == key
    with pytest.raises(ShareError, match="no shares"):
        combine_unlock_key_shares([])


@pytest.mark.parametrize(("k", "n"), [(1, 3), (4, 3), (2, 256), (0, 0)])
def test_impossible_splits_are_refused(k: int, n: int) -> None:
    with pytest.raises(ValueError, match="2 <= k <= n <= 255"):
        split_unlock_key(format_unlock_key(os.urandom(32)), k, n)


def test_all_n_shares_are_needed_when_k_equals_n() -> None:
    key = format_unlock_key(os.urandom(32))
    shares = split_unlock_key(key, 4, 4)
    assert combine_unlock_key_shares(reversed(shares)) == key
    with pytest.raises(ShareError, match="needs 4"):
        combine_unlock_key_shares(shares[:3])


# --- KeyStore ------------------------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_without_autolock_the_kek_sits_on_disk_0600(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    created = KeyStore.create(data_dir)
    assert not created.autolock
    assert created.unlock_key is None
    assert _mode(data_dir / "keys" / "kek") == 0o600
    assert _mode(data_dir / "keys" / "dek.ring") == 0o600
    assert _mode(data_dir / "keys") == 0o700
    opened = KeyStore.open(data_dir)
    assert opened.key_ids == created.key_ids == (1,)
    nonce = os.urandom(12)
    sealed = created.cipher(1).encrypt(nonce, b"x", None)
    assert opened.cipher(1).decrypt(nonce, sealed, None) == b"x"
    with pytest.raises(UnknownKeyError, match="data key 9"):
        opened.cipher(9)


def test_with_autolock_nothing_on_disk_opens_the_ring(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    created = KeyStore.create(data_dir, autolock=True)
    key = created.unlock_key
    assert key is not None
    assert not (data_dir / "keys" / "kek").exists()
    with pytest.raises(LockedError, match="concordctl unlock"):
        KeyStore.open(data_dir)
    assert KeyStore.open(data_dir, key).key_ids == (1,)
    other = KeyStore.create(tmp_path / "other", autolock=True).unlock_key
    assert other is not None
    with pytest.raises(WrongUnlockKeyError, match="does not open"):
        KeyStore.open(data_dir, other)
    typo = key[:-1] + ("A" if key[-1] != "A" else "B")
    with pytest.raises(InvalidUnlockKeyError, match="typo"):
        KeyStore.open(data_dir, typo)


def test_enable_and_disable_autolock(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    keys = KeyStore.create(data_dir)
    key = keys.enable_autolock()
    assert keys.unlock_key == key
    assert not (data_dir / "keys" / "kek").exists()
    with pytest.raises(LockedError):
        KeyStore.open(data_dir)
    with pytest.raises(KeyStoreError, match="already on"):
        keys.enable_autolock()
    reopened = KeyStore.open(data_dir, key)
    reopened.disable_autolock()
    assert _mode(data_dir / "keys" / "kek") == 0o600
    assert KeyStore.open(data_dir).key_ids == (1,)
    with pytest.raises(KeyStoreError, match="already off"):
        reopened.disable_autolock()
    with pytest.raises(KeyStoreError, match="no unlock key"):
        reopened.rotate_unlock_key()


def test_rotating_the_unlock_key_retires_the_old_one(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    keys = KeyStore.create(data_dir, autolock=True)
    old = keys.unlock_key
    assert old is not None
    new = keys.rotate_unlock_key()
    assert new != old
    with pytest.raises(WrongUnlockKeyError):
        KeyStore.open(data_dir, old)
    assert KeyStore.open(data_dir, new).key_ids == (1,)


def test_dek_rotation_and_dropping(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    keys = KeyStore.create(data_dir, autolock=True)
    assert keys.rotate_dek() == 2
    assert keys.rotate_dek() == 3
    assert keys.current_key_id == 3
    assert keys.drop_keys_older_than(2) == [1]
    with pytest.raises(KeyStoreError, match="current key is 3"):
        keys.drop_keys_older_than(4)
    reopened = KeyStore.open(data_dir, keys.unlock_key)
    assert reopened.key_ids == (2, 3)
    assert reopened.current_key_id == 3
    with pytest.raises(UnknownKeyError):
        reopened.cipher(1)


def test_a_crash_mid_enable_autolock_leaves_no_kek_behind(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    KeyStore.create(data_dir)
    stray = (data_dir / "keys" / "kek").read_bytes()
    key = KeyStore.open(data_dir).enable_autolock()
    (data_dir / "keys" / "kek").write_bytes(stray)  # as if the unlink never happened
    (data_dir / "keys" / "dek.ring.tmp").write_bytes(b"half")
    KeyStore.open(data_dir, key, read_only=True)
    assert (data_dir / "keys" / "kek").exists(), "read-only opens change nothing"
    KeyStore.open(data_dir, key)
    assert sorted(p.name for p in (data_dir / "keys").iterdir()) == ["dek.ring"]


# --- bad inputs --------------------------------------------------------------------------------


def test_opening_a_directory_that_does_not_exist(tmp_path: Path) -> None:
    with pytest.raises(NotInitializedError, match="does not exist") as err:
        KeyStore.open(tmp_path / "nope")
    # It names what a person can run (there is no `concordctl init`).
    assert "concordctl init" not in str(err.value)
    assert "`concord-coordinator --data-dir DIR ...`" in str(err.value)


def test_opening_a_directory_that_is_not_a_data_dir(tmp_path: Path) -> None:
    with pytest.raises(NotInitializedError, match="no FORMAT file") as err:
        KeyStore.open(tmp_path)
    assert "concordctl init" not in str(err.value) and "give a member's --data-dir" in str(
        err.value
    )
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotInitializedError, match="not a directory"):
        KeyStore.open(tmp_path / "file")


def test_creating_over_an_existing_data_dir(tmp_path: Path) -> None:
    KeyStore.create(tmp_path / "d")
    with pytest.raises(AlreadyInitializedError):
        KeyStore.create(tmp_path / "d")


@pytest.mark.parametrize(
    ("contents", "message"),
    [
        ("concord-data-dir 2\n", "format version 2; this build reads version 1"),
        ("etcd-data 1\n", "does not describe a Concord data dir"),
    ],
)
def test_a_data_dir_of_another_format(tmp_path: Path, contents: str, message: str) -> None:
    data_dir = tmp_path / "d"
    KeyStore.create(data_dir)
    (data_dir / "FORMAT").write_text(contents)
    with pytest.raises(FormatVersionError, match=message):
        KeyStore.open(data_dir)


def _flip(path: Path, pos: int) -> None:
    data = bytearray(path.read_bytes())
    data[pos] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("autolock", [False, True])
def test_a_damaged_ring_is_reported_as_damage_not_a_wrong_key(
    tmp_path: Path, autolock: bool
) -> None:
    data_dir = tmp_path / "d"
    key = KeyStore.create(data_dir, autolock=autolock).unlock_key
    ring = data_dir / "keys" / "dek.ring"
    original = ring.read_bytes()
    for pos in range(0, len(original), 7):
        ring.write_bytes(original)
        _flip(ring, pos)
        with pytest.raises(KeyFileCorruptError, match="damaged"):
            KeyStore.open(data_dir, key)
    ring.write_bytes(original[:30])
    with pytest.raises(KeyFileCorruptError, match="damaged"):
        KeyStore.open(data_dir, key)
    ring.unlink()
    with pytest.raises(KeyFileCorruptError, match="missing"):
        KeyStore.open(data_dir, key)


def test_a_ring_of_another_version(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    KeyStore.create(data_dir)
    ring = data_dir / "keys" / "dek.ring"
    body = bytearray(ring.read_bytes()[:-4])
    struct.pack_into(">H", body, 6, 9)
    ring.write_bytes(bytes(body) + struct.pack(">I", zlib.crc32(body)))
    with pytest.raises(FormatVersionError, match="key-ring format version 9"):
        KeyStore.open(data_dir)


def test_damaged_missing_or_foreign_kek_files(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    KeyStore.create(data_dir)
    kek = data_dir / "keys" / "kek"
    original = kek.read_bytes()
    _flip(kek, 10)
    with pytest.raises(KeyFileCorruptError, match="damaged"):
        KeyStore.open(data_dir)
    KeyStore.create(tmp_path / "other")
    kek.write_bytes((tmp_path / "other" / "keys" / "kek").read_bytes())
    with pytest.raises(KeyFileCorruptError, match="do not belong together"):
        KeyStore.open(data_dir)
    kek.unlink()
    with pytest.raises(KeyFileCorruptError, match="missing and autolock is off"):
        KeyStore.open(data_dir)
    kek.write_bytes(original)
    assert KeyStore.open(data_dir).key_ids == (1,)
