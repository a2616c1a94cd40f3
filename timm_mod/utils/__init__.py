""" Leaf helpers that know nothing of MoD, training or the CLI, and import nothing else of timm_mod: outputs written
whole, folders locked and checked, tables, side-by-side timing, ImageFolder checks, the packaged data folders."""
