"""jaxprompt.data."""
