"""`python -m tests.realvllm install`: the vLLM CPU venv and the tiny model, once."""

import sys

from tests.realvllm import main

raise SystemExit(main(sys.argv[1:]))
