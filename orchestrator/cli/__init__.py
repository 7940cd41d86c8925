"""``orch``, the command line: the top layer, importing any layer below on demand."""

from orchestrator.cli.exits import EXIT_BAD_INPUT, EXIT_CANCELLED, EXIT_ERROR, EXIT_OK
from orchestrator.cli.main import main

__all__ = ["EXIT_BAD_INPUT", "EXIT_CANCELLED", "EXIT_ERROR", "EXIT_OK", "main"]
