"""Export: write a trained model in other formats (one entry each in formats.py) and check each against
PyTorch before it is offered.

Only models that tuner itself builds from a checkpoint (read with weights_only=True) are exported
and then run here; a user-supplied ONNX file or engine is never loaded."""
