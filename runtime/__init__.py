"""anomalygpt-edge runtime: what runs on the line device. Never imports torch or transformers."""

__version__ = "0.1.0"
