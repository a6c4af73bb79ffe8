"""`sibeatgan server`: the mlflow server command it runs, and the URIs it refuses."""

import pytest
from click.testing import CliRunner

from sibeatgan.cli import main
from sibeatgan.tracking.server import redacted, server_command


def test_the_database_uri_travels_in_the_environment_with_its_driver():
    command, env = server_command("postgresql://mlflow:s3cret@db:5432/mlflow", "/srv/art")
    assert not any("s3cret" in part for part in command), "no password in the process list"
    assert env == {"MLFLOW_BACKEND_STORE_URI": "postgresql+psycopg://mlflow:s3cret@db:5432/mlflow"}
    at = command.index("--host")
    assert command[at + 1] == "127.0.0.1", "loopback unless told otherwise"
    assert command[command.index("--artifacts-destination") + 1] == "/srv/art"
    assert "--serve-artifacts" in command
    assert redacted("postgresql://mlflow:s3cret@db/mlflow") == "postgresql://mlflow:***@db/mlflow"


@pytest.mark.parametrize("uri", ["http://x:5000", "mysql://u@h/db", "/tmp/mlruns"])
def test_a_backend_that_is_no_usable_database_is_one_line(uri):
    result = CliRunner().invoke(main, ["server", "--backend-store-uri", uri])
    assert result.exit_code != 0
    assert result.output.count("\n") == 1 and "use a database URI" in result.output
