"""jaxprompt.runs."""
