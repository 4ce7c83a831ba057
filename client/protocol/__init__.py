"""client/protocol package."""
