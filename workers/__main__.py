"""``python -m workers``: run one worker process (configured by ``XPLAIN_*`` variables)."""

import sys

from workers.main import main

sys.exit(main())
