"""metrics methods."""
