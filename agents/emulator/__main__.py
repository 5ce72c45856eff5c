"""`python -m agents.emulator ...` is the same as `infermesh emulate-runtime ...`."""

import sys

from agents.emulator.server import main

sys.exit(main(sys.argv[1:]))
