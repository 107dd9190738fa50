"""The ``lazypull`` command line: one module per group of subcommands, each calling the library.

Every module in this package whose name does not start with ``_`` must define
``COMMANDS: list[click.Command]``; ``lazypull.cli.main.COMMAND_MODULES`` names the module(s) of each
command, imported only when that command runs (or for ``--help``).
"""

__all__: list[str] = []  # the command is lazypull.cli.main:main; the subcommand modules are its API
