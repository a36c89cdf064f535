"""`python -m jaxprompt`: the command line (cli.py)."""

import sys

from jaxprompt.cli.main import main

sys.exit(main())
