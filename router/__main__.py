"""`python -m router` = `infermesh router`."""

import sys

from router.main import main

sys.exit(main())
