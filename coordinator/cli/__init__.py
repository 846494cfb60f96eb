"""concordctl, the command line (click).

gRPC core logs (a failed TLS handshake, a refused connection) would go to stderr under the
person's command; concordctl reports every failure itself, once, with what to do, so those
logs are off unless GRPC_VERBOSITY asks for them. It must be set before grpc is imported,
hence here, the package every concordctl module is imported through.
"""

import os

os.environ.setdefault("GRPC_VERBOSITY", "NONE")
