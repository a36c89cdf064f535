"""jaxprompt: learn prompts by backpropagation against frozen GPT-2 and OPT models."""

__version__ = "0.1.0"
