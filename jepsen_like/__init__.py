"""jepsen_like package."""
