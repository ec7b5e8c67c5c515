"""Registries of classes that model files name by class name (descriptors, kernels)."""

from __future__ import annotations


def register(registry: dict, cls: type, kind: str) -> None:
    """Add ``cls`` to ``registry`` under its class name (a later class of that name replaces
    an earlier one), but a class defined outside gpal may not take a gpal class's name."""
    old = registry.get(cls.__name__)
    if old is not None and old.__module__.startswith("gpal.") and not cls.__module__.startswith("gpal."):
        raise TypeError(f"gpal already has a {kind} named {cls.__name__!r}; give yours another class name")
    registry[cls.__name__] = cls
