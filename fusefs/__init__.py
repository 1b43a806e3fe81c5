"""tierfs: a tiering FUSE filesystem for AI datasets."""

__version__ = "0.1.0"
