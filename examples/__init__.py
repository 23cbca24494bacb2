"""Runnable versions of the README's examples; each is exercised by tests/unit/test_examples.py."""
