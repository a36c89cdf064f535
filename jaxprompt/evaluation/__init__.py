"""jaxprompt.evaluation."""
