"""`python -m paylayer.cli`: the same as the `paylayer` command."""

from paylayer.cli import main

main()
