"""The ``orch`` command's exit codes.

0 the command did its work (a sweep completed, even with failed trials, which are
reported); 1 the command could not run (tracking store unreachable or unusable, cluster
unavailable, writes lost); 2 bad input (nothing started, nothing written); 130 the sweep was
cancelled (Ctrl-C, ``orch cancel``); 128 + the signal for SIGTERM (143) and SIGHUP (129).
"""

EXIT_OK, EXIT_ERROR, EXIT_BAD_INPUT, EXIT_CANCELLED = 0, 1, 2, 130
