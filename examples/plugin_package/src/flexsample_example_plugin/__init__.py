"""An example flexsample plugin package (see scorers.py)."""
