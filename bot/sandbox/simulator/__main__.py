"""`python -m bot.sandbox.simulator`: run the KPS/IAM simulator until Ctrl-C or SIGTERM."""

import sys

from bot.sandbox.simulator.cli import main

sys.exit(main())
