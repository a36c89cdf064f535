"""`python -m jaxprompt`: the command line (jaxprompt.cli)."""

import sys

from jaxprompt.cli import main

sys.exit(main())
