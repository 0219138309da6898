"""`synfleet check`: synfleet's own rendered deployment, proven with the real tools and its own checks."""
