"""The package version, in a module that imports nothing (it enters every baseline's cache key)."""
__version__ = "0.1.0"
