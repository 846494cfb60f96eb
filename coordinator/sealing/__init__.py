"""Sealed secrets: the envelope format and the sealing keys, shared by concordctl and the
coordinator.

Pure functions over bytes and the `cryptography` package: no I/O, no project imports, so the
CLI (which seals offline to a certificate) and the server (which unseals with the cluster's
private keys) run the very same code. It sits at the bottom of the layers, beside `fsm` and
`storage` (docs/architecture.md).

- `_envelope`: the versioned envelope (layout and reasons in its docstring): `seal`,
  `unseal`, `parse`, `Scope`, the `SealError` family.
- `_keys`: RSA-4096 sealing key pairs and their self-signed certificates.
- `_record`: the versioned record a SealedSecret's ciphertext is kept in, in the coordinator,
  for the sidecars that deliver it as files (`SealedRecord`, `sealed_record_key`).
"""

from ._envelope import ERRORS as ERRORS
from ._envelope import KEY_ID_BYTES as KEY_ID_BYTES
from ._envelope import VALUE_BYTES_MAX as VALUE_BYTES_MAX
from ._envelope import VERSION as VERSION
from ._envelope import Header as Header
from ._envelope import KeyLookup as KeyLookup
from ._envelope import Malformed as Malformed
from ._envelope import Opened as Opened
from ._envelope import Reason as Reason
from ._envelope import Scope as Scope
from ._envelope import ScopeMismatch as ScopeMismatch
from ._envelope import SealError as SealError
from ._envelope import Tampered as Tampered
from ._envelope import UnknownKey as UnknownKey
from ._envelope import key_id_of as key_id_of
from ._envelope import parse as parse
from ._envelope import scope_label as scope_label
from ._envelope import seal as seal
from ._envelope import unseal as unseal
from ._keys import CERT_VALIDITY_DAYS as CERT_VALIDITY_DAYS
from ._keys import KEY_BITS as KEY_BITS
from ._keys import CertificateError as CertificateError
from ._keys import SealingCertificate as SealingCertificate
from ._keys import SealingKeyPair as SealingKeyPair
from ._keys import load_private_key as load_private_key
from ._keys import load_sealing_certificate as load_sealing_certificate
from ._keys import new_sealing_key as new_sealing_key
from ._keys import sealing_certificate as sealing_certificate
from ._record import RECORD_VERSION as RECORD_VERSION
from ._record import SealedRecord as SealedRecord
from ._record import sealed_record_key as sealed_record_key
from ._record import sealed_record_name as sealed_record_name
from ._record import sealed_record_prefix as sealed_record_prefix

__all__ = [
    "CERT_VALIDITY_DAYS",
    "ERRORS",
    "KEY_BITS",
    "KEY_ID_BYTES",
    "RECORD_VERSION",
    "VALUE_BYTES_MAX",
    "VERSION",
    "CertificateError",
    "Header",
    "KeyLookup",
    "Malformed",
    "Opened",
    "Reason",
    "Scope",
    "ScopeMismatch",
    "SealError",
    "SealedRecord",
    "SealingCertificate",
    "SealingKeyPair",
    "Tampered",
    "UnknownKey",
    "key_id_of",
    "load_private_key",
    "load_sealing_certificate",
    "new_sealing_key",
    "parse",
    "scope_label",
    "seal",
    "sealed_record_key",
    "sealed_record_name",
    "sealed_record_prefix",
    "sealing_certificate",
]
