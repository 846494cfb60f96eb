"""The cluster's public-key infrastructure: certificates, TLS directories and join tokens.

Pure of the runtime: it imports `cryptography` and the standard library only, so the CLI's
offline tools (`concordctl cluster init`, `seal`), the member process, the server's join and
secrets services, the operator's injection webhook and the tests all build and read the same
certificates with no event loop, socket or gRPC in sight. gRPC credentials made from this
material live in `coordinator.runtime.tls`.

- `certs`: the CA, member and client certificates, CSRs, the ids and roles they carry, and
  the two builders every certificate of the project goes through;
- `files`: a member's TLS directory (`--tls-dir`), checked before any socket opens;
- `tokens`: join tokens, `CONCORD-JOIN-1-<CA fingerprint>-<secret>`.
"""

from .certs import BACKDATE as BACKDATE
from .certs import CA_VALIDITY_DAYS as CA_VALIDITY_DAYS
from .certs import CERT_VALIDITY_DAYS as CERT_VALIDITY_DAYS
from .certs import CSR_BYTES_MAX as CSR_BYTES_MAX
from .certs import CSR_NAMES_MAX as CSR_NAMES_MAX
from .certs import MEMBER_URI_PREFIX as MEMBER_URI_PREFIX
from .certs import OPERATOR_ROLE as OPERATOR_ROLE
from .certs import ROLE_URI_PREFIX as ROLE_URI_PREFIX
from .certs import CertifiedKey as CertifiedKey
from .certs import CsrRequest as CsrRequest
from .certs import TlsError as TlsError
from .certs import build_ca_cert as build_ca_cert
from .certs import build_leaf_cert as build_leaf_cert
from .certs import cert_pem as cert_pem
from .certs import check_csr as check_csr
from .certs import create_ca as create_ca
from .certs import host_sans as host_sans
from .certs import is_ip_address as is_ip_address
from .certs import issue_client_cert as issue_client_cert
from .certs import issue_member_cert as issue_member_cert
from .certs import key_pem as key_pem
from .certs import make_csr as make_csr
from .certs import member_id_of as member_id_of
from .certs import member_uri as member_uri
from .certs import new_key as new_key
from .certs import new_member_key as new_member_key
from .certs import now_utc as now_utc
from .certs import roles_of as roles_of
from .certs import sign_member_csr as sign_member_csr
from .certs import subject_name as subject_name
from .files import CA_FILE as CA_FILE
from .files import CA_KEY_FILE as CA_KEY_FILE
from .files import MEMBER_CERT_FILE as MEMBER_CERT_FILE
from .files import MEMBER_KEY_FILE as MEMBER_KEY_FILE
from .files import MemberTls as MemberTls
from .files import load_ca_key as load_ca_key
from .files import load_member_tls as load_member_tls
from .files import write_ca as write_ca
from .files import write_member_tls as write_member_tls
from .files import write_pem as write_pem
from .tokens import JOIN_TOKEN_PREFIX as JOIN_TOKEN_PREFIX
from .tokens import JOIN_TOKEN_VERSION as JOIN_TOKEN_VERSION
from .tokens import JoinToken as JoinToken
from .tokens import JoinTokenError as JoinTokenError
from .tokens import JoinTokenRefusedError as JoinTokenRefusedError
from .tokens import StoredToken as StoredToken
from .tokens import ca_fingerprint as ca_fingerprint
from .tokens import check_ca_fingerprint as check_ca_fingerprint
from .tokens import format_time_ms as format_time_ms
from .tokens import new_join_token as new_join_token
from .tokens import verify_join_token as verify_join_token
