""" What the commands do, as functions tests and notebooks call directly: train and compare models on an
ImageFolder, time them against their baselines and identity bounds, profile them, count their channel
selections, quantize them, and the two quickstarts."""
