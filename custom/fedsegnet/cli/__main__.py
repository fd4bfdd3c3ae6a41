"""``python -m fedsegnet.cli``: the same as the ``fedsegnet`` console script."""

import sys

from fedsegnet.cli import main

sys.exit(main())
