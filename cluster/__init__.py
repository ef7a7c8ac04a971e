"""Ray runtime, job entry points and the CLI."""
