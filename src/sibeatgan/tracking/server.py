"""A shared MLflow tracking server: a database for runs and the registry, artifacts proxied
through the server from a folder or an object store (`sibeatgan server`)."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from urllib.parse import urlsplit, urlunsplit

# database schemes MLflow's SQLAlchemy store takes, and the driver each needs
DRIVERS = {
    "postgresql": "psycopg",  # passed on as postgresql+psycopg, whatever SQLAlchemy's default
    "postgresql+psycopg": "psycopg",
    "postgresql+psycopg2": "psycopg2",
    "mysql+pymysql": "pymysql",
    "mysql+mysqldb": "MySQLdb",
    "sqlite": None,
}


def redacted(uri: str) -> str:
    """The URI with its password, if any, as ***."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def check_backend(uri: str) -> None:
    """Refuse a backend URI MLflow's database store cannot use here, in one line."""
    scheme = urlsplit(uri).scheme
    if scheme not in DRIVERS:
        raise ValueError(
            f"backend store {redacted(uri)}: use a database URI "
            f"({', '.join(s + '://' for s in DRIVERS)}), e.g. postgresql://mlflow@localhost/mlflow"
        )
    driver = DRIVERS[scheme]
    if driver and importlib.util.find_spec(driver) is None:
        raise ValueError(
            f"backend store {redacted(uri)} needs the {driver} package: pip install -e "
            "'.[scale]' (or pip install it)"
        )


def with_driver(uri: str) -> str:
    """`postgresql://` spelled with the driver the project installs (psycopg 3), so that an
    older SQLAlchemy, whose default for it is psycopg2, takes the same one."""
    if uri.startswith("postgresql://"):
        return "postgresql+psycopg://" + uri.removeprefix("postgresql://")
    return uri


def server_command(
    backend_store_uri: str,
    artifacts_destination: str,
    host: str = "127.0.0.1",
    port: int = 5000,
    workers: int = 4,
    allowed_hosts: str | None = None,
) -> tuple[list[str], dict[str, str]]:
    """The `mlflow server` command line and the environment it adds: runs and models in the
    database, artifacts served by the server itself (clients need no access to the artifact
    store). The database URI goes through the environment, so that a password in it does not
    show in the process list."""
    check_backend(backend_store_uri)
    mlflow = shutil.which("mlflow") or f"{sys.prefix}/bin/mlflow"
    command = [
        mlflow,
        "server",
        "--serve-artifacts",
        "--artifacts-destination",
        artifacts_destination,
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    if allowed_hosts:
        command += ["--allowed-hosts", allowed_hosts]
    return command, {"MLFLOW_BACKEND_STORE_URI": with_driver(backend_store_uri)}
