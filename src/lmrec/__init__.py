"""lmrec: recommendation powered by pretrained language models, from data to served endpoint."""

__version__ = "0.1.0"
