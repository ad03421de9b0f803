"""The worker process: claims jobs from Redis, runs explainers in batched groups, stores results."""
