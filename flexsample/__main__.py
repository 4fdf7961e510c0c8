from flexsample.cli.app import main

main()
