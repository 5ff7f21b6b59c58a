"""``python -m altclip.cli``: what ``torchrun -m altclip.cli ...`` starts in each process."""

import sys

from altclip.cli.main import main

sys.exit(main())
