"""Where jaxprompt finds and keeps things: runs go under the current directory (or
$JAXPROMPT_HOME), never next to the installed package; the embedded model is the wheel's copy
where the package has one."""

from __future__ import annotations

import os

from conftest import REPO

import jaxprompt
from jaxprompt import paths
from jaxprompt.config import TrainConfig
from jaxprompt.runs.layout import default_run_dir


def test_a_new_run_goes_under_the_current_directory_or_jaxprompt_home(tmp_path, monkeypatch):
    monkeypatch.delenv(paths.HOME_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    run = default_run_dir(TrainConfig.from_flags(task=("antonyms",), method="prefix"))
    assert os.path.dirname(run) == str(tmp_path / "checkpoints") and os.path.basename(run).startswith("antonyms-prefix-")
    monkeypatch.setenv(paths.HOME_ENV, str(tmp_path / "home"))
    assert os.path.dirname(default_run_dir(TrainConfig())) == str(tmp_path / "home")
    assert not run.startswith(os.path.dirname(jaxprompt.__file__))


def test_the_embedded_model_is_the_packages_copy_where_there_is_one(tmp_path, monkeypatch):
    assert paths.embedded_model() == str(REPO / "checkpoints" / "tiny-gpt2-wordnet")  # a source checkout
    package = tmp_path / "site-packages" / "jaxprompt"
    (package / "embedded" / "tiny-gpt2-wordnet").mkdir(parents=True)
    monkeypatch.setattr(paths, "_PACKAGE", str(package))  # as installed from the wheel
    assert paths.embedded_model() == str(package / "embedded" / "tiny-gpt2-wordnet")
