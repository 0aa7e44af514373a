from cloudvac.cli import main

main()
