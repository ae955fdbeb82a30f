"""The HTTP service behind ``fmnist-alexnet serve MODEL`` (the ``serve`` extra):

- ``app.py``: the FastAPI app (endpoints, errors, the page);
- ``batcher.py``: micro-batching of concurrent requests into one forward pass;
- ``limits.py``: the request-body size limit; ``metrics.py``: Prometheus metrics;
- ``loading.py``: what MODEL names (checkpoint, run folder, .onnx) and its facts;
- ``server.py``: uvicorn, signals and a clean drain on shutdown;
- ``static/``: the page and the offline API docs, no external assets.
"""
