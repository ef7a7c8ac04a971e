"""Ray Data stages: datasets, k-shot sampling, LLM generation, verification, filters."""
