"""The Data Coffer benchmark: `python -m bench` (see bench/README.md)."""
