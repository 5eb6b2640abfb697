"""authkeep: a self-hosted auth backend."""

__version__ = "0.1.0"
