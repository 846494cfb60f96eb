"""Suite-wide pytest options. (Options must be registered in a conftest pytest loads before
it parses the command line, so this lives at the top of tests/.)"""

import pytest

# The control plane and its namespaces (tests/kube/fixtures.py): one plane per session for
# every directory that uses it.
pytest_plugins = ["tests.kube.fixtures"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--rewrite",
        action="store_true",
        default=False,
        help="regenerate the golden output of tests/raft/scenarios/*.txt in place",
    )
