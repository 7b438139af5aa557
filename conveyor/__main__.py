"""``python -m conveyor ...``: the ``conveyor`` command, as ``python -m celery`` is Celery's."""

from __future__ import annotations

from conveyor.cli.main import main

if __name__ == "__main__":
    main(prog_name="conveyor")
