"""Peer frameworks on the benchmark workload, each in its own virtualenv (see `setup.py`)."""
