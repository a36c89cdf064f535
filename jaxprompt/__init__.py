"""jaxprompt: learn prompts by backpropagation against frozen causal language models, in JAX.

The public API, `import jaxprompt as jp`:

    a frozen model      Model, ModelConfig, load_pretrained, preset, Tokenizer, DEFAULT_MODEL
    tasks               Task, Template, get_task, task_from_rows
    prompt methods      make_method (as the command line builds them), PromptMethod, SoftPrompt,
                        PTuning, PrefixTuning, AdaptionPrompt, RelaxedPrompt, ProjectedPrompt, MultiTask
    batches             encode, common_prefix_length, Batches, eval_batches, collate, longest
    the prompted model  prompted_logits, target_logprobs, prompt_loss
    training            OptimizerConfig, make_optimizer, TrainState, make_train_step, TrainConfig,
                        RunOptions, train_prompt
    a trained run       Session, load_run
    inference           Engine, Request, Sampling, Completion
    choice tasks        score_choices
    PEFT                export_peft, import_peft

Each name is imported from its module when first used, so `import jaxprompt` is cheap and the
command line answers `--help` without loading JAX. Everything else is reachable by its module
(`jaxprompt.models.layers.attention`, ...) but is not promised to stay where it is.
"""

import importlib

__version__ = "0.1.0"

_API = {
    "Model": "jaxprompt.models.model", "ModelConfig": "jaxprompt.models.model_config",
    "load_pretrained": "jaxprompt.models.loading", "preset": "jaxprompt.models.registry",
    "Tokenizer": "jaxprompt.data.tokenizer", "DEFAULT_MODEL": "jaxprompt.paths",
    "Task": "jaxprompt.data.tasks", "get_task": "jaxprompt.data.tasks", "task_from_rows": "jaxprompt.data.tasks",
    "Template": "jaxprompt.data.templates",
    "make_method": "jaxprompt.prompts.build", "PromptMethod": "jaxprompt.prompts.base",
    "SoftPrompt": "jaxprompt.prompts.soft", "RelaxedPrompt": "jaxprompt.prompts.soft",
    "ProjectedPrompt": "jaxprompt.prompts.soft", "PTuning": "jaxprompt.prompts.ptuning",
    "PrefixTuning": "jaxprompt.prompts.prefix", "AdaptionPrompt": "jaxprompt.prompts.adaption",
    "MultiTask": "jaxprompt.prompts.multitask",
    "encode": "jaxprompt.data.templates", "common_prefix_length": "jaxprompt.data.templates",
    "Batches": "jaxprompt.data.batches", "eval_batches": "jaxprompt.data.batches",
    "collate": "jaxprompt.data.batches", "longest": "jaxprompt.data.batches",
    "prompted_logits": "jaxprompt.prompts.forward", "target_logprobs": "jaxprompt.prompts.forward",
    "prompt_loss": "jaxprompt.prompts.loss",
    "OptimizerConfig": "jaxprompt.config", "TrainConfig": "jaxprompt.config", "RunOptions": "jaxprompt.config",
    "make_optimizer": "jaxprompt.training.optim", "TrainState": "jaxprompt.training.step",
    "make_train_step": "jaxprompt.training.step", "train_prompt": "jaxprompt.training.run",
    "Session": "jaxprompt.session", "load_run": "jaxprompt.runs.load",
    "Engine": "jaxprompt.inference.engine", "Request": "jaxprompt.inference.requests",
    "Sampling": "jaxprompt.inference.sampling", "Completion": "jaxprompt.inference.requests",
    "score_choices": "jaxprompt.evaluation.choices",
    "export_peft": "jaxprompt.runs.export", "import_peft": "jaxprompt.runs.peft_import",
}
__all__ = list(_API)


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'jaxprompt' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value  # the next access is a plain attribute
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
