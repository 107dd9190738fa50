"""The ``lazypull`` command line: one module per group of subcommands, each calling the library.

Every module in this package whose name does not start with ``_`` is imported by
``lazypull.cli.main`` and must define ``COMMANDS: list[click.Command]``.
"""

__all__: list[str] = []  # the command is lazypull.cli.main:main; the subcommand modules are its API
