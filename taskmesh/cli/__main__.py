"""`python -m taskmesh.cli ...`: the same as the `taskmesh` command."""

import sys

from taskmesh.cli.commands import main

sys.exit(main())
