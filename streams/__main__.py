"""`python -m streams` is the `ledgerflow` command."""

from streams.cli import main

main()
