"""dasi core: configs, run logs, provenance, file formats and the CLI shared by every stage."""

__version__ = "0.1.0"
