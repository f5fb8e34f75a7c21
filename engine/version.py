"""The package version (its own module, so that readers of it need not import the engine)."""

__version__ = "0.1.0"
