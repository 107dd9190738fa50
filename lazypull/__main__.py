import sys

if sys.argv[1:2] == ["daemon"]:     # the mount server as the CLI starts it: no click (cli._serve)
    import gc

    gc.disable()    # until the server's restore is done (snapshot.server): its imports set off collections
    from lazypull.cli._serve import main_plain

    main_plain(sys.argv[2:])
    gc.enable()     # not the plain form: click's command

from lazypull.cli.main import main

main()
