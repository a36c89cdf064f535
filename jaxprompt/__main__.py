import sys

from jaxprompt.cli import main

sys.exit(main())
