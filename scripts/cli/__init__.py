"""The `splitrelay` command: one typer app (splitrelay.cli.main), one module per command group.

The console script enters here so that a base install (the inference SDK alone, without the CLI's
typer and rich) gets a clear message instead of a traceback.
"""

from __future__ import annotations

import sys

CLI_PACKAGES = ("typer", "rich", "click")


def main() -> None:
    """Console-script entry point."""
    try:
        from splitrelay.cli.main import app
    except ModuleNotFoundError as exc:
        if exc.name not in CLI_PACKAGES:
            raise
        print(
            f"the splitrelay command needs {exc.name}: pip install 'splitrelay[cli]' "
            "(or [relay], [cost], [infra] for those roles)",
            file=sys.stderr,
        )
        raise SystemExit(2) from None
    app()
