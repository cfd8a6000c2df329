"""Test helpers that speak real wire protocols (used by tests/ and bench/).

Not part of the jupyter-sac wheel: the editable install (`make install`) puts the
repository root on sys.path, so tests, benchmarks and the fakes they start as
subprocesses (``python -m sac_testing.fake_anthropic``) import it from here.
"""
