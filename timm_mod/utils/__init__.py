""" Leaf helpers that import nothing else of timm_mod: outputs written whole, tables and figures, side-by-side
timing, ImageFolder checks, the in-memory data path, ONNX and the CPU runtimes, the packaged data folders."""
