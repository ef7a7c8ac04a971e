"""raydistill: distill LLM teachers into small students from a handful of labels, on Ray."""

__version__ = "0.1.0"
