"""``python -m piman`` runs the CLI."""

from piman.cli.app import main

main()
