"""The model: ResNet50 and its new head, freeze depth and BatchNorm policy (`resnet`), where weights
come from and how they are read safely (`weights`), tuner's checkpoint format (`checkpoint`), and the
tables and tree that describe a model (`summary`)."""
