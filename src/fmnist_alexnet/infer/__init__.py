"""A trained model at work: metrics on a split (``evaluate``), people's own images
(``predict``), exported files (``export``) and the engine that runs a model file
(``engines``)."""
