"""``python -m wam_common.cli`` is the ``wam-policy`` command."""
import sys

from . import main

sys.exit(main())
