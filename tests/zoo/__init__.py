"""Tests of the model zoo and the demo model."""
