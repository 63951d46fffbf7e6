"""``python -m wam_apps.cli`` is the ``wam-policy`` command."""
import sys

from wam_apps.cli import main

sys.exit(main())
