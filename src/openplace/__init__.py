"""openplace: a real-time collaborative pixel canvas."""

__version__ = "0.1.0"
