"""Runners: one module per model family behind one small contract (``runners.base.Runner``)."""
