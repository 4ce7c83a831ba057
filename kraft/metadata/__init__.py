"""Metadata records, the immutable metadata image and the delta that builds it."""
