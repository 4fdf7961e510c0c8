"""`python -m flexsample`: the command line, with Ctrl-C and SIGTERM handled from the start."""

from flexsample.cli import main

main()
