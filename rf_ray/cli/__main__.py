"""``python -m rf_ray.cli``: the ``rf-ray`` command."""

import sys

from rf_ray.cli import main

sys.exit(main())
