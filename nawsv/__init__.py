"""nawsv: noise-adaptive warm-up (NAW-SV) for self-supervised speaker verification.

Kept import-light on purpose: submodules pull in torch/transformers only when used.
"""
__version__ = "0.1.0"

__all__ = ["Verifier", "__version__"]


def __getattr__(name: str):
    """Lazy top-level API: ``nawsv.Verifier`` imports torch only on first use (``import nawsv`` stays light)."""
    if name == "Verifier":
        from nawsv.api import Verifier

        return Verifier
    raise AttributeError(f"module 'nawsv' has no attribute {name!r}")
