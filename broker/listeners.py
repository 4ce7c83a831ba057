"""The names of a node's listeners, and what each one serves."""

from __future__ import annotations

BROKER_LISTENER = "PLAINTEXT"  # clients: what Metadata advertises
CONTROLLER_LISTENER = "CONTROLLER"  # the quorum's RPCs and the controller's APIs
# Broker to broker (replica fetches): never served where clients connect, so a client
# cannot pose as a follower and move a leader's high-water mark.
REPLICATION_LISTENER = "REPLICATION"
LISTENER_NAMES = (BROKER_LISTENER, CONTROLLER_LISTENER, REPLICATION_LISTENER)
