"""``python -m orchestrator.cli``: the ``orch`` command."""

import sys

from orchestrator.cli.main import main

sys.exit(main())
