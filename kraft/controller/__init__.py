"""The controller: pure managers that turn requests into metadata records."""
