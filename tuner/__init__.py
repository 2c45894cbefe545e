"""tuner: fine-tune a pretrained ResNet50 on your own images.

The engine lives here and never imports gradio; `app.py` (the studio) and `tuner.cli` (the command
line) are thin front ends over it. Importing this package does no work: no model is built and
nothing touches the network until a function is called.
"""

__version__ = "0.1.0"
