"""jaxprompt.models.layers."""
