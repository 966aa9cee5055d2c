"""The device check: what a lent GPU machine runs (check.sh) and the wheels it carries there (wheels.py)."""
