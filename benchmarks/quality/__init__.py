"""Quality benchmark: every method of the catalogue on the demo model's held-out scenes.

``python -m benchmarks.quality`` explains the held-out synthetic scenes (whose object masks
are known) with every method, scores the maps (pointing game, energy-based pointing game,
deletion and insertion AUC, model-randomisation sanity correlation), times them, and writes
``benchmarks/results/quality.md``, ``benchmarks/results/quality.png`` and the README section
between ``<!-- quality:start -->`` and ``<!-- quality:end -->``.
"""
