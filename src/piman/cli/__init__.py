"""The ``piman`` command line: Typer app, one module per command group.

The only place in piman that prints or exits.
"""
