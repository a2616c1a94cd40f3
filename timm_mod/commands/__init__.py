""" The `timm-mod` command line: argument parsing and printing only; nothing in the package imports it."""
