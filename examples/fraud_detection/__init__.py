"""Fraud detection on pykraft: payments in, alerts out, within 100 ms.

A seeded generator writes payment events keyed by card id to `payments`, with a known
share of planted fraud (velocity bursts, impossible travel, amount spikes) whose ground
truth goes to a side file. Detector processes form one consumer group, keep per-card
state and write alerts to `alerts` (at least once, or exactly once in transactions when
the broker serves them). `replay` reads a time range for retraining under its own group
id; `demo` runs it all against a 3-node cluster with a live view; `bench` prints one
JSON line.
"""
