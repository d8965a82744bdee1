"""``python -m warmfleet.cli``: the same as the `warmfleet` console script (`up` starts `serve` this way)."""

from warmfleet.cli import main

main()
