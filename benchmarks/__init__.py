"""Trial and benchmark scripts, each run from the repository root as a module
(``python -m benchmarks.serve_load ...``) and importable by the tests."""
