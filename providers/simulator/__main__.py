"""`python -m providers.simulator --port 8900 [options]`; see `providers.simulator.cli`."""

import sys

from providers.simulator.server import main

if __name__ == "__main__":
    sys.exit(main())
