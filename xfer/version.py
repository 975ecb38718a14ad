"""The version of xfer, in its own module so that xfer's modules read it without importing the package."""

__version__ = "0.1.0"
