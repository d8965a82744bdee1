"""The top floor: the admin CLI (``commands.py``, ``top.py``, ``launch.py``) and the process entry
(``serve.py``) that assemble everything: the built-in models (``defaults.py``) and the cluster config
file (``cluster_config.py``), the controller and the gateway. Nothing below this package imports it.

Importing the package stays light: :func:`main` loads the commands (click, the client) when it runs.
"""

from __future__ import annotations


def main() -> None:
    """The `warmfleet` console script."""
    from warmfleet.cli.commands import main as run

    run()
