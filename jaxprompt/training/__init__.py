"""jaxprompt.training."""
