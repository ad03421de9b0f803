"""End-to-end tests: the real gateway (uvicorn) and real worker processes over Redis."""
