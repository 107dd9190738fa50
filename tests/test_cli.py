from click.testing import CliRunner

from lazypull.cli.main import cli


def test_version() -> None:
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert "lazypull" in result.output
