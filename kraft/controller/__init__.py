"""kraft/controller package."""
