"""python -m dcft_lab.report FOLDER ...: see dcft_lab.report.cli."""

import sys

from .cli import main

sys.exit(main())
