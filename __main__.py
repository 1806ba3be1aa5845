"""`python -m datacure ...` runs the command line."""

from .cli import main

main()
