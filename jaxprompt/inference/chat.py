"""Chat messages -> the text a model reads, through its tokenizer's chat template, rendered as
transformers' `apply_chat_template(messages, tokenize=False, ...)` renders it: the same template
files (chat_template.jinja and additional_chat_templates/*.jinja, else tokenizer_config.json's
"chat_template"), the same sandboxed jinja2 environment (trim_blocks, lstrip_blocks, loop
controls, `raise_exception`, `strftime_now`, a `tojson` that does not escape HTML), the tokenizer's
named special tokens (bos_token, eos_token, ...) as variables, messages without their None-valued
keys, and `continue_final_message`'s cut. Its text is then read as transformers reads a rendered
chat (`encode`): no special tokens added (the template writes them), and the special tokens the
template wrote read as the tokens themselves, not as their spelling.

A tokenizer class's built-in special tokens that its tokenizer_config.json does not name are not
known here (transformers would pass them to the template too): templates read the ones they use
from the config in practice.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import weakref

from jaxprompt.inference.requests import RequestError

SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")  # transformers' names of a message's reasoning
CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "


class ChatError(RequestError):
    """A conversation this model's chat template cannot render (or a model without one)."""


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
    templates: tuple[tuple[str, str], ...]  # (name, jinja source); one unnamed template is named "default"
    special_tokens: tuple[tuple[str, str], ...]  # (bos_token, "<s>"), ...
    single: bool = True  # one template (transformers: `tokenizer.chat_template` is a string)

    @classmethod
    def load(cls, directory: str) -> "ChatTemplate | None":
        """The chat template(s) stored with a tokenizer, or None if it has none."""
        config = _json(os.path.join(directory, "tokenizer_config.json"))
        templates: dict[str, str] = {}
        if os.path.isfile(os.path.join(directory, "chat_template.jinja")):
            templates["default"] = _read(os.path.join(directory, "chat_template.jinja"))
        extra = os.path.join(directory, "additional_chat_templates")
        if os.path.isdir(extra):
            for name in sorted(os.listdir(extra)):
                if name.endswith(".jinja"):
                    templates[name.removesuffix(".jinja")] = _read(os.path.join(extra, name))
        single = len(templates) == 1 and "default" in templates
        if not templates:  # the files take priority over the config's entry
            stored = config.get("chat_template")
            if isinstance(stored, str):
                templates, single = {"default": stored}, True
            elif isinstance(stored, list):
                templates = {t["name"]: t["template"] for t in stored if isinstance(t, dict)}
                single = False
        if not templates:
            return None
        return cls(tuple(templates.items()), tuple(named_special_tokens(directory).items()), single)

    def encode(self, tokenizer, text: str) -> list[int]:
        """A rendered conversation's token ids, its special tokens read as themselves."""
        return special_aware(tokenizer, tuple(v for _, v in self.special_tokens))(text)

    def source(self, name: str | None = None, tools=None) -> str:
        """The template a conversation is rendered with (transformers' `get_chat_template`)."""
        templates = dict(self.templates)
        if self.single and name is None:
            return templates["default"]
        if name is not None and name in templates:
            return templates[name]
        if name is None:
            if tools is not None and "tool_use" in templates:
                return templates["tool_use"]
            if "default" in templates:
                return templates["default"]
            raise ChatError(f"the model has several chat templates and none is the default: "
                            f"{', '.join(sorted(templates))}")
        return name  # a template's own text

    def render(self, messages: list[dict], add_generation_prompt: bool = True, continue_final_message: bool = False,
               name: str | None = None) -> str:
        """The conversation as the model reads it."""
        source = self.source(name)
        chat = [{k: v for k, v in m.items() if v is not None} for m in messages]
        chat = [_aliased(m) for m in chat]
        if continue_final_message:
            if not chat or not isinstance(chat[-1].get("content"), str):
                raise ChatError("a final message to continue needs text content")
            final = chat[-1]["content"]
            if "content" not in source:
                raise ChatError("the chat template does not read a message's content: it cannot continue one")
            chat[-1] = {**chat[-1], "content": final + CONTINUE_TAG}
        import jinja2

        try:
            text = _compiled(source).render(messages=chat, tools=None, documents=None,
                                            add_generation_prompt=add_generation_prompt, **dict(self.special_tokens))
        except (jinja2.TemplateError, TypeError, ValueError, LookupError, AttributeError, RecursionError) as e:
            raise ChatError(f"the chat template cannot render these messages: {e}") from None
        if continue_final_message:
            if final.strip() not in text or CONTINUE_TAG.strip() not in text:
                raise ChatError("the chat template drops part of the final message: it cannot be continued")
            at = text.rindex(CONTINUE_TAG.strip())
            text = text[:at] if text[at:at + len(CONTINUE_TAG)] == CONTINUE_TAG else text[:at].rstrip()
        return text


def named_special_tokens(directory: str) -> dict[str, str]:
    """The tokenizer's named special tokens (bos_token, ...) as its config states them."""
    settings = {**_json(os.path.join(directory, "special_tokens_map.json")),
                **_json(os.path.join(directory, "tokenizer_config.json"))}
    special = {}
    for key in SPECIAL_TOKENS:
        value = settings.get(key)
        value = value.get("content") if isinstance(value, dict) else value
        if isinstance(value, str):
            special[key] = value
    return special


_ENCODERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> {specials: encode}


def special_aware(tokenizer, specials: tuple[str, ...]):
    """`text -> ids` with `specials` (those the vocabulary has) read as single tokens wherever they
    are written, as transformers' tokenizers read their special tokens; the tokenizer itself is
    left as it is (a copy of its backend knows them)."""
    known = _ENCODERS.setdefault(tokenizer, {})
    if specials not in known:
        from tokenizers import AddedToken

        backend = type(tokenizer.backend).from_str(tokenizer.backend.to_str())
        backend.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials
                                    if backend.token_to_id(s) is not None])
        known[specials] = lambda text: backend.encode(text, add_special_tokens=False).ids
    return known[specials]


def _aliased(message: dict) -> dict:
    """A message's reasoning under every name templates read it by (as transformers passes it)."""
    reasoning = next((message[k] for k in REASONING_FIELDS if message.get(k) is not None), None)
    return message if reasoning is None else {"thinking": reasoning, **message, "reasoning_content": reasoning}


@functools.lru_cache(maxsize=16)
def _compiled(source: str):
    """The template in transformers' sandboxed environment."""
    from datetime import datetime

    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(jinja2.ext.Extension):
        """`{% generation %}...{% endgeneration %}`: marks the assistant's text; rendered as its body."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    env.globals["dict"] = _Dict()
    env.globals["namespace"] = _namespace_class()
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise ChatError(f"the chat template does not parse: {e}") from None


class _Dict:
    """`dict(...)` and `dict.fromkeys(...)` in templates, without the type itself (as transformers)."""

    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
        return dict.fromkeys(*args, **kwargs)


def _namespace_class():
    import jinja2

    class Namespace(jinja2.utils.Namespace):
        """jinja2's namespace without underscore-prefixed attributes (as transformers)."""

        def __init__(*args, **kwargs):
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                Namespace._check(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            Namespace._check(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check(name):
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(f"a namespace attribute may not start with '_': {name!r}")

    return Namespace


def _json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()
