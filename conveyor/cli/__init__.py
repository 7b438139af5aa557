"""The ``conveyor`` command line (entry point: :func:`conveyor.cli.main.main`)."""
