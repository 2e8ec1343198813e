"""``python -m splitrelay.cli``: the `splitrelay` command without its console script (child processes)."""

from splitrelay.cli import main

main()
