"""Ray Serve apps: the LLM teacher pool and the student classifier app."""
