"""`python -m export_poller.cli`, as the `export-poller` command."""

from export_poller.cli import main

main()
