import sys

if sys.argv[1:2] == ["daemon"]:     # the mount server as the CLI starts it: no click (cli._serve)
    from lazypull.cli._serve import main_plain

    main_plain(sys.argv[2:])

from lazypull.cli.main import main

main()
