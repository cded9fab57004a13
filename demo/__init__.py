"""The local demo of the whole loop (see demo/run.py)."""
