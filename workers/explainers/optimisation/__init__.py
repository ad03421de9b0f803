"""optimisation methods."""
