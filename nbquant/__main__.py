"""`python -m nbquant`: the command line (see nbquant.cli)."""


import sys

from .cli import main

sys.exit(main())
