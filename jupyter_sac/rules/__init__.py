"""Pure rules: what the product decides, with no I/O (no database, network, files
or tornado), so every process may use them and a test is a function call.

`make lint` holds them to it (import-linter's contract in pyproject.toml); the
layers above are described in docs/developer.md.
"""
