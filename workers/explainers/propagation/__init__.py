"""propagation methods."""
