"""jaxprompt.serving."""
