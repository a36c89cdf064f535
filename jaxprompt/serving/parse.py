"""Request bodies -> engine requests, every field checked: a bad one is a `BadRequest` naming it and
what it allows (OpenAI's error shape, a 4xx), before anything is queued or loaded.

Sampling fields are checked against `Sampling`'s own declaration (types and ranges), as the CLI's
flags are; the server adds its limits (--max-tokens, OpenAI's four stop strings) and OpenAI's
default temperature of 1.
"""
from __future__ import annotations

import dataclasses
import json

from jaxprompt.inference.requests import Request
from jaxprompt.inference.sampling import MAX_STOP, TOP_LOGPROBS, Sampling
from jaxprompt.serving.options import MESSAGE_LIMIT, BadRequest, ServeOptions
from jaxprompt.settings import SettingError

OPENAI_DEFAULTS = {"temperature": 1.0}  # OpenAI's API samples at temperature 1 unless told otherwise
ROLES = ("system", "developer", "user", "assistant", "tool")


class RequestSampling(Sampling):
    """`Sampling` whose messages name a field as a request body does ('max_tokens')."""

    LABEL = "'{name}'"


def json_body(raw: bytes, limit: int):
    """The parsed body: valid JSON of valid Unicode text, nested no deeper than Python parses."""
    if len(raw) > limit:
        raise BadRequest(f"the request body is {len(raw)} bytes; this server takes at most {limit}", 413)
    try:
        body = json.loads(raw)
    except RecursionError:
        raise BadRequest("the request body is nested too deeply to parse") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise BadRequest(f"the request body is not valid JSON ({_quoted(str(e))})") from None
    try:
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest("the request body holds a lone surrogate (\\ud800-\\udfff): not Unicode text") from None
    except RecursionError:
        raise BadRequest("the request body is nested too deeply to parse") from None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    return body


def field(body: dict, name: str, kind, default, check=None, what: str = ""):
    """`body[name]` (or `default` if absent or null), of type `kind` and passing `check`."""
    value = body.get(name, default)
    if value is None:
        return default
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool or \
            (check is not None and not check(value)):
        raise BadRequest(f"'{name}' must be {what}, got {_quoted(json.dumps(value))}", param=name)
    return value


def sampling_of(values: dict, options: ServeOptions, max_positions: int) -> Sampling:
    """`Sampling` of the body's values (by field name; None: the default), each checked as declared."""
    values = {k: v for k, v in values.items() if v is not None}
    values = {**OPENAI_DEFAULTS, **values}
    if isinstance(values.get("stop"), str):
        values["stop"] = (values["stop"],)
    elif isinstance(values.get("stop"), list):
        values["stop"] = tuple(values["stop"])
    for name, value in values.items():  # one at a time: the message names the field at fault
        try:
            RequestSampling(**{name: value})
        except SettingError as e:
            raise BadRequest(_quoted(str(e)), param=name) from None
    sampling = RequestSampling(**values)
    limit = min(options.max_tokens, max_positions)
    if sampling.max_tokens > limit:
        raise BadRequest(f"'max_tokens' {sampling.max_tokens}: must be an integer in [1, {limit}] (this server's "
                         "--max-tokens, and the model's positions)", param="max_tokens")
    if len(sampling.stop) > MAX_STOP:
        raise BadRequest(f"'stop' must be a string or a list of at most {MAX_STOP} strings", param="stop")
    return sampling


def model_name(body: dict) -> str:
    name = body.get("model")
    if not isinstance(name, str) or not name:
        raise BadRequest("'model' must be a served prompt's name (see GET /v1/models)", param="model")
    return name


@dataclasses.dataclass
class Parsed:
    """A checked body: the prompt's name, the inputs (texts or one conversation) and how to decode."""

    model: str
    sampling: Sampling
    stream: bool
    include_usage: bool
    texts: list[str | list[int]] = dataclasses.field(default_factory=list)  # /v1/completions: a row per text or ids
    echo: bool = False
    raw: bool = False
    messages: list[dict] = dataclasses.field(default_factory=list)  # /v1/chat/completions


def completion_body(body: dict, options: ServeOptions, max_positions: int) -> Parsed:
    """A /v1/completions body."""
    model = model_name(body)
    texts = body.get("prompt")
    if isinstance(texts, str) or (isinstance(texts, list) and texts and all(_is_id(t) for t in texts)):
        texts = [texts]  # one text, or one text's token ids
    if not isinstance(texts, list) or not texts or \
            not all(isinstance(p, str) or (isinstance(p, list) and all(_is_id(t) for t in p)) for p in texts):
        raise BadRequest("'prompt' must be a string, a non-empty list of strings, a list of token ids or a list of "
                         "lists of them", param="prompt")
    if len(texts) > options.max_batch:
        raise BadRequest(f"'prompt' lists {len(texts)} texts; this server decodes at most {options.max_batch} "
                         "together", param="prompt")
    if any(not (p.strip() if isinstance(p, str) else p) for p in texts):
        raise BadRequest("'prompt' is empty", param="prompt")
    sampling = sampling_of({k: body.get(k) for k in ("max_tokens", "temperature", "top_p", "top_k", "seed", "stop",
                                                     "logprobs")}, options, max_positions)
    field(body, "n", int, 1, lambda v: v == 1, "1 (one completion per prompt)")
    return Parsed(model, sampling, *_streaming(body), texts=texts, echo=field(body, "echo", bool, False, None,
                                                                             "true or false"),
                  raw=field(body, "raw", bool, False, None, "true or false"))


def chat_body(body: dict, options: ServeOptions, max_positions: int) -> Parsed:
    """A /v1/chat/completions body: messages of text, OpenAI's chat sampling fields."""
    model = model_name(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list of {\"role\", \"content\"} objects", param="messages")
    checked = [_message(m, i) for i, m in enumerate(messages)]
    wants = field(body, "logprobs", bool, False, None, "true or false")
    top = field(body, "top_logprobs", int, None, lambda v: 0 <= v <= TOP_LOGPROBS, f"an integer in 0..{TOP_LOGPROBS}")
    if top is not None and not wants:
        raise BadRequest("'top_logprobs' needs 'logprobs': true", param="top_logprobs")
    n_new = body.get("max_completion_tokens")
    sampling = sampling_of({"max_tokens": n_new if n_new is not None else body.get("max_tokens"),
                            **{k: body.get(k) for k in ("temperature", "top_p", "top_k", "seed", "stop")},
                            "logprobs": (top or 0) if wants else None}, options, max_positions)
    field(body, "n", int, 1, lambda v: v == 1, "1 (one completion per request)")
    return Parsed(model, sampling, *_streaming(body), messages=checked)


def _message(m, i: int) -> dict:
    """A chat message as the template reads it: role, content as text (text parts joined by a
    newline, as vLLM joins them for templates that read text), and name."""
    where = f"messages[{i}]"
    if not isinstance(m, dict):
        raise BadRequest(f"'{where}' must be an object with 'role' and 'content'", param="messages")
    role = m.get("role")
    if role not in ROLES:
        raise BadRequest(f"'{where}.role' must be one of {', '.join(ROLES)}, got {_quoted(json.dumps(role))}",
                         param="messages")
    content = m.get("content")
    if isinstance(content, list):
        if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                   for p in content):
            raise BadRequest(f"'{where}.content' parts must be {{\"type\": \"text\", \"text\": TEXT}} (this server "
                             "reads text only)", param="messages")
        content = "\n".join(p["text"] for p in content)
    elif not (isinstance(content, str) or (content is None and role == "assistant")):
        raise BadRequest(f"'{where}.content' must be a string or a list of text parts", param="messages")
    out = {"role": role, "content": content}
    if m.get("name") is not None:
        if not isinstance(m["name"], str):
            raise BadRequest(f"'{where}.name' must be a string", param="messages")
        out["name"] = m["name"]
    return out


def _streaming(body: dict) -> tuple[bool, bool]:
    stream = field(body, "stream", bool, False, None, "true or false")
    extra = field(body, "stream_options", dict, {}, None, "an object")
    usage = field(extra, "include_usage", bool, False, None, "true or false")
    return stream, usage


def completion_requests(parsed: Parsed, served, engine) -> list[Request]:
    """The engine's requests of a /v1/completions body (row j samples with (seed, j)); input that
    does not fit the prompt or the model is refused here, before it is queued."""
    V = engine.config.vocab_size
    if any(not 0 <= t < V for p in parsed.texts if not isinstance(p, str) for t in p):
        raise BadRequest(f"'prompt' holds a token id outside the vocabulary (0..{V - 1})", param="prompt")
    # token ids are the input as given: read raw, after the prompt, as a raw text's ids are
    requests = [Request(parsed.model, text=p, sampling=parsed.sampling, raw=parsed.raw, key=j) if isinstance(p, str)
                else Request(parsed.model, ids=tuple(p), sampling=parsed.sampling, raw=True, key=j)
                for j, p in enumerate(parsed.texts)]
    for r in requests:
        checked(engine, r, served)
    return requests


def chat_request(parsed: Parsed, served, engine, template) -> Request:
    """The conversation rendered by the model's chat template and read as raw text after the prompt
    (placed first, as PEFT places it; prefix and adaption prompts reach it without positions)."""
    if template is None:
        raise BadRequest(f"model {engine.model_id!r} has no chat template (no chat_template in its "
                         "tokenizer_config.json, no chat_template.jinja): use /v1/completions", param="model")
    try:
        text = template.render(parsed.messages, add_generation_prompt=True)
    except ValueError as e:
        raise BadRequest(str(e), param="messages") from None
    request = Request(parsed.model, ids=tuple(template.encode(engine.tokenizer, text)), sampling=parsed.sampling,
                      raw=True)
    checked(engine, request, served)
    return request


def checked(engine, request: Request, served) -> None:
    try:
        engine.check(request, served)
    except ValueError as e:  # RequestError, TemplateError, SamplingError: the request's own
        raise BadRequest(str(e), param="messages" if request.ids is not None else "prompt") from None


def _is_id(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _quoted(text: str) -> str:
    return text if len(text) <= MESSAGE_LIMIT else text[:MESSAGE_LIMIT] + "..."
