"""Operations tests (metrics, logs, migrations, admin view, `coup status`) reuse the domain's
real nodes, databases and clients."""

from tests.domain.conftest import (  # noqa: F401 - fixtures, found by pytest through this module
    connect,
    database_url,
    domain_node,
    make_node,
    no_errors_logged,
    postgres_url,
    pytest_configure,
    transport,
)
