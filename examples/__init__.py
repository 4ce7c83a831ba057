"""Runnable examples built on pykraft (each a package: `python -m examples.<name>`)."""
