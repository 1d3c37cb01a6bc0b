"""privaudit: how much does this model leak, and is the claimed privacy guarantee true?"""

__version__ = "0.1.0"

__all__ = ["__version__"]
