"""Quality benchmark: every method of the catalogue on every evaluation model's held-out scenes.

``python -m benchmarks.quality`` explains the held-out synthetic scenes (whose object masks
are known) of each model in :data:`~benchmarks.quality.config.EVALUATION_MODELS` with every
method, scores the maps (pointing game, energy-based pointing game, deletion and insertion AUC,
model-randomisation sanity correlation), times them, and writes per model
``benchmarks/results/quality[-<model>].md``, ``.png`` and ``.json``; then, from the JSON of
every model, ``quality-summary.md`` (method × model) and the README section between
``<!-- quality:start -->`` and ``<!-- quality:end -->``. ``--model`` reruns some models only.
"""
