"""jaxprompt.inference."""
