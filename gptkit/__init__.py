"""gptkit: a decoder-only GPT toolkit for the command line."""

__version__ = "0.1.0"
