"""`python -m payphone`."""

from payphone.cli import main

main()
