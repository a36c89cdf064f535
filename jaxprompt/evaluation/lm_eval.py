"""jaxprompt as a model of lm-evaluation-harness (lm-eval): its `LM` interface over a run (the
learned prompt applied to every request) or over a bare model.

    lm = JaxPromptLM.from_run("checkpoints/run")          # or JaxPromptLM.from_model("gpt2")
    lm_eval.simple_evaluate(model=lm, tasks=["hellaswag"])

or by name, as lm-eval's own command line builds a model: `--model jaxprompt --model_args
run=RUN[,member=K,which=best|last,batch_size=N]` (or `model=DIR_OR_HF_ID[,dtype=...]` for the
bare model). lm-eval 0.4 finds models only in its own registry, filled when lm-eval's code runs:
`jaxprompt-lm-eval` (evaluation/lm_eval_cli.py) is lm-eval's command line with this class
registered; lm-eval versions that discover the `lm_eval.models` entry point (declared in
pyproject.toml) find it from plain `lm_eval` too.

With `apply_chat_template`, lm-eval renders each request's conversation through
`apply_chat_template` below: the model's chat template (inference/chat.py, rendered as
transformers renders it, as lm-eval's `hf` backend calls it).

Requests are tokenised as lm-eval's `hf` backend tokenises them (context and continuation split
after encoding the whole, trailing context spaces moved to the continuation, an empty context
replaced by EOS), so a request's log-likelihood is the one `hf` gives the model with the prompt's
PEFT export. Requests sharing a context (a multiple-choice question's answers) are scored as one
choice example: the context once, each continuation from its keys/values (evaluation/choices.py); the head
every request shares (the prompt's virtual tokens) comes from the prompt cache.

Prompt placement: a prompt learned in a template that starts with `{prompt}` (one slot) is put
before every request, as PEFT puts it; prefix tuning and adaption prompts reach every request
without positions of their own. A prompt learned inside a template (text before it, or several
slots) is refused: what a request would need around it is not defined.
"""

from __future__ import annotations

from typing import Sequence

from jaxprompt.data.choices import ChoiceExample
from jaxprompt.data.templates import Encoded, TemplateError
from jaxprompt.evaluation.choices import score
from jaxprompt.inference.engine import Engine
from jaxprompt.inference.requests import Request, prompt_comes_first
from jaxprompt.inference.sampling import Sampling

PROMPT_NAME = "lm-eval"  # the engine's name for the prompt every request takes
MODEL_NAME = "jaxprompt"  # lm-eval's `--model` name for JaxPromptLM
INSTALL = "lm-eval is not installed: pip install 'jaxprompt[eval]' (or pip install lm-eval)"


def require_lm_eval():
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise TemplateError(INSTALL) from None
    from lm_eval.api.model import TemplateLM

    return TemplateLM


def placement_problem(session) -> str | None:
    """Why the session's prompt cannot be applied to an arbitrary request, or None."""
    method = session.method
    if method.n_tasks > 1:
        return "a multi-task prompt holds one prompt per task; evaluate one task's run"
    if not method.takes_positions:
        return None  # prefix keys/values and adaption prompts reach every position
    if not prompt_comes_first(session.task, method.length):
        return (f"the prompt was trained inside the template {session.task.template.text!r}; lm-eval requests "
                "can only take a prompt placed first ('{prompt} ...')")
    return None


def make_lm_class():
    TemplateLM = require_lm_eval()

    class JaxPromptLM(TemplateLM):
        """lm-eval's `LM` over a jaxprompt session and prompt (`prompt=None`, `method=None`: the bare model)."""

        def __init__(self, session, prompt=None, batch_size: int = 16, max_gen_toks: int = 256, learned: bool = True):
            super().__init__()
            self.session, self.batch_size, self.max_gen_toks = session, int(batch_size), int(max_gen_toks)
            if learned and prompt is not None:
                problem = placement_problem(session)
                if problem:
                    raise TemplateError(f"cannot apply this run's prompt to lm-eval requests: {problem}")
                self.method, self.prompt = session.method.inference_prompt(prompt, session.model, session.frozen)
            else:
                self.method, self.prompt = None, None
            self.tokenizer = session.tokenizer
            from jaxprompt.inference.chat import named_special_tokens, special_aware

            specials = named_special_tokens(session.weights_dir) if session.weights_dir else {}
            self._encode = special_aware(session.tokenizer, tuple(specials.values()))
            # generation goes through the one inference path, the prompt served under one name
            self.engine = Engine.of_session(session, max_batch=self.batch_size)
            self.engine.add(PROMPT_NAME, session if self.method is not None else None,
                            prompt if self.method is not None else None)

        @classmethod
        def from_run(cls, run_dir: str, member: int | None = None, which: str = "best", quantize: str | None = None,
                     **kwargs):
            from jaxprompt.runs.load import load_run

            session, prompt, info = load_run(run_dir, which=which, member=member, quantize=quantize)
            if info["members"] and member is None:
                raise TemplateError(f"{run_dir} trained {len(info['members'])} prompts: pass member=0.."
                                    f"{len(info['members']) - 1}")
            return cls(session, prompt, **kwargs)

        @classmethod
        def from_model(cls, model: str, dtype: str = "float32", quantize: str | None = None, **kwargs):
            from jaxprompt.data.tasks import BUILTIN
            from jaxprompt.prompts import SoftPrompt
            from jaxprompt.session import Session

            session = Session.load(model, BUILTIN["antonyms"], SoftPrompt(length=1), dtype=dtype,
                                   quantize=quantize)
            return cls(session, None, learned=False, **kwargs)

        @classmethod
        def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
            """lm-eval's `--model_args` (`run=RUN,member=0` or `model=gpt2`) and its own settings."""
            from lm_eval.utils import simple_parse_args_string

            return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

        @classmethod
        def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None):
            args = dict(arg_dict)
            extra = {k: v for k, v in (additional_config or {}).items() if v is not None}
            size = args.pop("batch_size", extra.get("batch_size", 16))
            options = {"batch_size": int(size) if str(size).isdigit() else 16}  # lm-eval's "auto": our default
            if "max_gen_toks" in args:
                options["max_gen_toks"] = int(args.pop("max_gen_toks"))
            run, model = args.pop("run", None), args.pop("model", None)
            if (run is None) == (model is None):
                raise TemplateError("--model_args: give run=RUN_DIR (a trained prompt) or model=DIR_OR_HF_ID "
                                    "(the bare model)")
            keys = ("member", "which", "bare", "quantize") if run is not None else ("dtype", "quantize")
            unknown = sorted(set(args) - set(keys))
            if unknown:
                raise TemplateError(f"--model_args: unknown argument {unknown[0]!r}; jaxprompt takes "
                                    f"{'run' if run is not None else 'model'}, {', '.join(keys)}, batch_size, "
                                    "max_gen_toks")
            if model is not None:
                return cls.from_model(str(model), **args, **options)
            bare = bool(args.pop("bare", False))
            return cls.from_run(str(run), **args, **options, **({"learned": False} if bare else {}))

        # ---- chat templates (lm-eval's --apply_chat_template) -----------------------------------

        @property
        def tokenizer_name(self) -> str:
            """Fingerprints lm-eval's request cache of chat-templated requests."""
            return (self.session.weights_dir or self.session.model_id or self.tokenizer.name).replace("/", "__")

        def _chat(self):
            from jaxprompt.inference.chat import ChatTemplate

            template = ChatTemplate.load(self.session.weights_dir) if self.session.weights_dir else None
            if template is None:
                raise TemplateError(f"{self.session.model_id or 'the model'} has no chat template (no chat_template "
                                    "in its tokenizer_config.json, no chat_template.jinja)")
            return template

        def chat_template(self, chat_template: bool | str = False) -> str | None:
            """The template lm-eval records with the results (None: none applied)."""
            if chat_template is False or chat_template is None:
                return None
            return self._chat().source(chat_template if isinstance(chat_template, str) else None)

        def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
            """The conversation as the model reads it, as lm-eval's `hf` backend renders it: with
            the assistant's turn opened, or its last message continued; a template that refuses a
            system message is tried again without it."""
            from jaxprompt.inference.chat import ChatError

            template = self._chat()
            render = lambda chat: template.render(chat, add_generation_prompt=add_generation_prompt,
                                                  continue_final_message=not add_generation_prompt)
            try:
                return render(chat_history)
            except ChatError:
                return render([m for m in chat_history if m["role"] != "system"])

        # ---- tokens ----------------------------------------------------------------------------

        @property
        def eot_token_id(self) -> int:
            return self.session.tokenizer.eos_token_id

        @property
        def n_virtual(self) -> int:
            """Positions the prompt takes in front of a request's tokens (embedding prompts)."""
            return self.method.length if self.method is not None and self.method.takes_positions else 0

        @property
        def max_length(self) -> int:
            taken = self.n_virtual + (0 if self.method is None else self.method.prefix_positions)
            return self.session.config.max_positions - taken

        def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
            """The string's ids with its special tokens read as themselves (as `hf`'s tokenizer reads a
            chat template's <|eot|>), none added."""
            return list(self._encode(string))

        def tok_decode(self, tokens: Sequence[int]) -> str:
            return self.session.tokenizer.decode(list(tokens))

        def _context(self, tokens: Sequence[int]) -> Encoded:
            n = self.n_virtual
            return Encoded([self.session.pad_id] * n + list(tokens), list(range(n)) + [-1] * len(tokens), 0)

        # ---- scoring -----------------------------------------------------------------------------

        def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
            """(log-likelihood, is greedy) per (key, context ids, continuation ids); requests with the
            same context are one choice example."""
            groups: dict[tuple[int, ...], list[int]] = {}
            pieces = []
            for i, (_, context, continuation) in enumerate(requests):
                if not continuation:
                    raise TemplateError("an lm-eval request's continuation tokenizes to nothing")
                whole = (list(context) + list(continuation))[-(self.max_length + 1):]  # hf keeps the tail
                context, continuation = whole[:len(whole) - len(continuation)], whole[len(whole) - len(continuation):]
                pieces.append(continuation)
                groups.setdefault(tuple(context), []).append(i)
            keys = sorted(groups, key=len, reverse=True)  # similar lengths share a bucket
            examples = [ChoiceExample(self._context(k), [pieces[i] for i in groups[k]], 0,
                                      ["" for _ in groups[k]]) for k in keys]
            logliks, greedys = score(self.session, self.prompt, examples, self.method, self.batch_size)
            out: list[tuple[float, bool] | None] = [None] * len(requests)
            for k, ll, gr in zip(keys, logliks, greedys):
                for i, x, g in zip(groups[k], ll, gr):
                    out[i] = (x, g)
            for i, (key, _, _) in enumerate(requests):
                if key is not None and self.cache_hook is not None:
                    self.cache_hook.add_partial("loglikelihood", key, out[i])
            return out

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
            from lm_eval import utils

            out = []
            for (string,) in [r.args for r in requests]:
                windows = [(None, *w) for w in map(utils.make_disjoint_window, utils.get_rolling_token_windows(
                    token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1))]
                out.append(sum(ll for ll, _ in self._loglikelihood_tokens(windows)))
            return out

        def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
            """Greedy (or, with `do_sample`, sampled) continuations cut at lm-eval's `until`
            strings, through the inference engine: the prompt before the context's tokens, as
            in scoring; the context keeps its tail when it is too long, as `hf` does."""
            batch = []
            for context, gen_kwargs in [r.args for r in requests]:
                kwargs = dict(gen_kwargs or {})
                until = kwargs.pop("until", None) or [self.tok_decode([self.eot_token_id])]
                until = [until] if isinstance(until, str) else list(until)
                n_new = min(int(kwargs.pop("max_gen_toks", self.max_gen_toks)), self.max_length - 1)
                temperature = float(kwargs.pop("temperature", 0.0)) if kwargs.pop("do_sample", False) else 0.0
                ids = self.tok_encode(context)[-(self.max_length - n_new):] or [self.prefix_token_id]
                batch.append(Request(PROMPT_NAME, ids=tuple(ids), raw=True,
                                     sampling=Sampling(max_tokens=n_new, temperature=temperature, stop=tuple(until))))
            return [c.text for c in self.engine.complete(batch)]

    import lm_eval.models  # noqa: F401  (lm-eval's own models: it fills its registry only while that is empty)
    from lm_eval.api.registry import model_registry, register_model

    if MODEL_NAME not in model_registry:  # lm-eval's entry-point discovery may have placed it first
        register_model(MODEL_NAME)(JaxPromptLM)
    return JaxPromptLM


def __getattr__(name: str):
    """`JaxPromptLM`, lm-eval's `LM` subclass, is made on first use (lm-eval is an optional extra;
    without it the import is one line saying how to install it)."""
    if name == "JaxPromptLM":
        globals()[name] = make_lm_class()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def task_manager(tasks: list[str], include_path: str | None = None):
    """lm-eval's task index for `tasks`: the include path's alone when it defines every one of them
    as a task (indexing lm-eval's own task files takes 7-12 s on a 2-core CPU), else lm-eval's
    with it (its tasks, groups and tags)."""
    from lm_eval.tasks import TaskManager

    if include_path:
        local = TaskManager(include_path=include_path, include_defaults=False)
        if all(t in local.all_subtasks for t in tasks):
            return local
        return TaskManager(include_path=include_path)
    return TaskManager()


def run_lm_eval(lm, tasks: list[str], include_path: str | None = None, limit: int | None = None,
                num_fewshot: int | None = None, log_samples: bool = False, apply_chat_template: bool = False) -> dict:
    """`lm_eval.simple_evaluate` on `lm`; an unknown task is one line naming it."""
    require_lm_eval()
    import lm_eval

    manager = task_manager(tasks, include_path)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise TemplateError(f"lm-eval has no task {unknown[0]!r}" + (f" (searched {include_path} too)"
                                                                      if include_path else "")
                            + "; list them with `lm_eval ls tasks`")
    return lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=manager, limit=limit,
                                   num_fewshot=num_fewshot, log_samples=log_samples,
                                   apply_chat_template=apply_chat_template)
