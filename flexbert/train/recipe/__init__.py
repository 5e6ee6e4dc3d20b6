"""The recipe: its schema, loading and validation, `train.py --help`, pre-flight checks and the
adapter to flexbert.data."""
