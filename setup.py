"""The wheel carries the embedded default model as package data: `checkpoints/tiny-gpt2-wordnet`
(its source in the repository) is copied to `jaxprompt/embedded/` when the package is built, where
`jaxprompt.paths.embedded_model` finds it. Everything else is in pyproject.toml."""

import os
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py

EMBEDDED = "tiny-gpt2-wordnet"


class BuildWithEmbeddedModel(build_py):
    def run(self):
        super().run()
        source = os.path.join(os.path.dirname(os.path.abspath(__file__)), "checkpoints", EMBEDDED)
        target = os.path.join(self.build_lib, "jaxprompt", "embedded", EMBEDDED)
        os.makedirs(target, exist_ok=True)
        for name in sorted(os.listdir(source)):  # the model, its tokenizer, licence and pretraining report
            shutil.copyfile(os.path.join(source, name), os.path.join(target, name))


setup(cmdclass={"build_py": BuildWithEmbeddedModel})
