"""`python -m ntkft.cli`."""

from . import main

main()
