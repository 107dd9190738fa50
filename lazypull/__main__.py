from lazypull.cli.main import main

main()
