"""Chat (inference/chat.py, /v1/chat/completions): conversations rendered exactly as transformers'
`apply_chat_template` renders them (the same template files and environment); a chat completion
through the official openai client equals PEFT's greedy tokens over transformers' tokenization of
the conversation with the adapter's prompt first; streamed chunks add up to it; a model without a
template is refused, saying so."""

from __future__ import annotations

import json

import pytest

from jaxprompt.inference.chat import ChatError, ChatTemplate

transformers = pytest.importorskip("transformers")

CONVERSATIONS = [
    [{"role": "user", "content": "hot and cold are"}],
    [{"role": "system", "content": "  Answer with one word.  "}, {"role": "user", "content": "big?"},
     {"role": "assistant", "content": "small"}, {"role": "user", "content": "up?"}],
    [{"role": "user", "content": "café 😀 <|endoftext|> and"}, {"role": "assistant", "content": None},
     {"role": "user", "content": "again"}],
]


def _theirs(directory):
    return transformers.AutoTokenizer.from_pretrained(directory)


@pytest.mark.parametrize("generation", [True, False])
def test_rendered_as_transformers_renders(chat_model_dir, generation):
    ours, theirs = ChatTemplate.load(chat_model_dir), _theirs(chat_model_dir)
    for messages in CONVERSATIONS:
        expected = theirs.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
        assert ours.render(messages, add_generation_prompt=generation) == expected
    # an assistant turn continued (lm-eval's apply_chat_template without a generation prompt)
    messages = CONVERSATIONS[1][:3]
    expected = theirs.apply_chat_template(messages, tokenize=False, continue_final_message=True)
    assert ours.render(messages, add_generation_prompt=False, continue_final_message=True) == expected
    with pytest.raises(ChatError, match="roles are system, user and assistant, not tool"):
        ours.render([{"role": "tool", "content": "x"}])


def test_template_files_take_priority_as_in_transformers(chat_model_dir, tmp_path):
    """chat_template.jinja over the config's entry; named templates beside it (several: `tool_use`
    picked only with tools, `default` otherwise)."""
    import shutil

    shutil.copytree(chat_model_dir, tmp_path, dirs_exist_ok=True)
    (tmp_path / "chat_template.jinja").write_text("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n"
                                                  "{% endfor %}{% if add_generation_prompt %}>>{% endif %}")
    (tmp_path / "additional_chat_templates").mkdir()
    (tmp_path / "additional_chat_templates" / "terse.jinja").write_text("{{ messages[-1]['content'] }}")
    ours, theirs = ChatTemplate.load(str(tmp_path)), _theirs(str(tmp_path))
    for name in (None, "terse"):
        expected = theirs.apply_chat_template(CONVERSATIONS[1], tokenize=False, add_generation_prompt=True,
                                              chat_template=name)
        assert ours.render(CONVERSATIONS[1], name=name) == expected
    (tmp_path / "chat_template.jinja").unlink()
    shutil.rmtree(tmp_path / "additional_chat_templates")
    assert ChatTemplate.load(str(tmp_path)).render(CONVERSATIONS[0]) == \
        _theirs(str(tmp_path)).apply_chat_template(CONVERSATIONS[0], tokenize=False, add_generation_prompt=True)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    assert ChatTemplate.load(str(tmp_path)) is None


def _peft_chat(served_app, name: str, messages, n: int) -> str:
    """PEFT's greedy completion of transformers' tokens of the conversation, cut at EOS."""
    import torch
    from peft import PeftModel

    tokenizer = _theirs(served_app.model)
    ids = torch.tensor([tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                      return_dict=False)])
    model = PeftModel.from_pretrained(transformers.AutoModelForCausalLM.from_pretrained(served_app.model),
                                      served_app.paths[name]).eval()
    new = []
    with torch.no_grad():
        for _ in range(n):
            token = int(model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, -1].argmax())
            if token == tokenizer.eos_token_id:
                break
            new.append(token)
            ids = torch.cat([ids, torch.tensor([[token]])], 1)
    return tokenizer.decode(new)


@pytest.fixture(scope="module")
def client(served_app):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url="http://testserver/v1", api_key="none", http_client=served_app.client,
                         max_retries=0)


@pytest.mark.parametrize("name", ["soft0", "prefix1"])
def test_a_chat_completion_is_pefts_greedy_completion_of_the_conversation(served_app, client, name):
    pytest.importorskip("peft")
    messages = CONVERSATIONS[1]
    r = client.chat.completions.create(model=name, messages=messages, max_tokens=6, temperature=0)
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == _peft_chat(served_app, name, messages, 6)
    assert r.usage.completion_tokens <= 6 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens

    stream = client.chat.completions.create(model=name, messages=messages, max_tokens=6, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == r.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == \
        [r.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens


def test_chat_logprobs_in_openais_shape(client):
    r = client.chat.completions.create(model="prefix0", messages=CONVERSATIONS[0], max_tokens=3, temperature=0,
                                       logprobs=True, top_logprobs=2)
    content = r.choices[0].logprobs.content
    assert "".join(t.token for t in content) == r.choices[0].message.content
    assert all(t.logprob <= 0 and len(t.top_logprobs) == 2 and t.top_logprobs[0].logprob >= t.logprob - 1e-5
               for t in content)
    assert bytes(content[0].bytes).decode() == content[0].token


def test_a_model_without_a_chat_template_is_refused_saying_so(served_app):
    from fastapi.testclient import TestClient

    from jaxprompt.serving.app import build_app

    app = build_app(served_app.engine, served_app.library, served_app.options, served_app.batcher, None)
    r = TestClient(app).post("/v1/chat/completions", json={"model": "soft0", "messages": CONVERSATIONS[0]})
    assert r.status_code == 400
    assert "has no chat template" in r.json()["error"]["message"] and r.json()["error"]["param"] == "model"
