"""jaxprompt.parallel."""
