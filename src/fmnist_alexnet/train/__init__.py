"""Training: :func:`train` runs the loop (``loop``); the time budget, the step monitor,
tracking and stopping are called by it at fixed points. ``start`` decides what a ``train``
command means (a new run or a resumed one); ``data`` is training's input path, which
``bench`` times too."""

from fmnist_alexnet.train.loop import TrainingDiverged, TrainingInterrupted, TrainResult, train

__all__ = ["TrainResult", "TrainingDiverged", "TrainingInterrupted", "train"]
