"""Benchmarks of ``orch`` against its peers (a plain loop, Ray Tune, Hydra multirun).

``python -m bench`` runs the scenarios (see ``bench/README.md``) and writes a table to
``bench/results/``. Nothing here is imported by the service; tests only smoke-test the
harness, never its timings.
"""
