"""Version of qsmprep (single source, read by pyproject and the CLI)."""

__version__ = "0.1.0"
