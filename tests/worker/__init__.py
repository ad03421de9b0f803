"""Tests of the worker process: handler stages, grouping, queue protocol, loop, processes."""
