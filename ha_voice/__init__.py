"""ha-voice: a high-availability voice-command service for a Unitree Go2 on two or more Jetsons."""

__all__ = ["__version__"]

__version__ = "0.1.0"
