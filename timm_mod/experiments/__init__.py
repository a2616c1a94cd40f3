""" What the commands do, as functions tests and notebooks call directly: train and compare models on an
ImageFolder (with its in-memory data path), convert a trained plain model and publish checkpoints, time models
against their baselines and identity bounds in PyTorch and the CPU runtimes (ONNX export, onnxruntime, OpenVINO,
int8), profile them, count their channel selections, quantize them, and the two quickstarts."""
