"""nawsv: noise-adaptive warm-up (NAW-SV) for self-supervised speaker verification.

Kept import-light on purpose: submodules pull in torch/transformers only when used.
"""
__version__ = "0.1.0"
