"""Where trials run: the Ray cluster, slots (one actor or a gang), the one trial runner,
the memory limit and system metrics, the dispatcher and its Prometheus series."""
