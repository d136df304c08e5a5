"""Runnable examples: `python -m optimjax.examples.<name>`."""
