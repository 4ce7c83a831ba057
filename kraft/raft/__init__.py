"""kraft/raft package."""
