"""Data the pure core ships: the bundled GPU price table (prices.json)."""
