"""`python -m export_poller.providers.simulator --port 8900 [options]`; see `.cli`."""

import sys

from export_poller.providers.simulator.server import main

if __name__ == "__main__":
    sys.exit(main())
