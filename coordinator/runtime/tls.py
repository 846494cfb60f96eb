"""gRPC credentials from the cluster's TLS material (`coordinator.pki`).

Peers and clients speak gRPC over TLS with client certificates required
(`server_credentials(..., require_client_auth=True)`): a peer or client without a certificate
from the cluster CA cannot even open a connection. The one exception is the join port
(`join_server_credentials`): a joining member has no certificate yet, so that port asks for
none, and it presents the CA with its own certificate, so the joiner can check the CA against
its token before it trusts anything. The grpc module is untyped: these are its opaque objects.
"""

from __future__ import annotations

import grpc

from coordinator.pki import MemberTls


def server_credentials(ca_pem: bytes, cert_pem: bytes, key_pem: bytes) -> grpc.ServerCredentials:
    """Server side of mutual TLS: present `cert_pem`, demand a client certificate that
    chains to `ca_pem`."""
    return grpc.ssl_server_credentials(
        [(key_pem, cert_pem)], root_certificates=ca_pem, require_client_auth=True
    )


def channel_credentials(
    ca_pem: bytes, cert_pem: bytes | None = None, key_pem: bytes | None = None
) -> grpc.ChannelCredentials:
    """Client side: trust only `ca_pem`, and present `cert_pem` if given."""
    return grpc.ssl_channel_credentials(
        root_certificates=ca_pem, private_key=key_pem, certificate_chain=cert_pem
    )


def join_server_credentials(member: MemberTls) -> grpc.ServerCredentials:
    """The join port's side: present the member certificate *followed by the CA* (so a
    joiner can fetch the CA in the handshake and check it against its token), and ask the
    caller for no certificate (a joiner has none yet)."""
    chain = member.cert_pem.rstrip(b"\n") + b"\n" + member.ca_pem
    return grpc.ssl_server_credentials([(member.key_pem, chain)], require_client_auth=False)


def member_server_credentials(member: MemberTls) -> grpc.ServerCredentials:
    return server_credentials(member.ca_pem, member.cert_pem, member.key_pem)


def member_channel_credentials(member: MemberTls) -> grpc.ChannelCredentials:
    return channel_credentials(member.ca_pem, member.cert_pem, member.key_pem)
