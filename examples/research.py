"""Research use of the functional core: a choice task from Python rows, a loss of one's own over
the prompted model's log-likelihoods, choices scored from Python, and the prompt exported to PEFT,
whose forward pass then computes the same logits."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxprompt as jp

config, frozen = jp.load_pretrained(jp.DEFAULT_MODEL)
model, tokenizer = jp.Model(config), jp.Tokenizer.load(jp.DEFAULT_MODEL)

# a task from Python rows: which of two words is the antonym (each row its own candidates)
pairs = [("hot", "cold"), ("good", "bad"), ("big", "small"), ("up", "down"), ("left", "right"), ("day", "night"),
         ("fast", "slow"), ("old", "new"), ("high", "low"), ("early", "late"), ("rich", "poor"), ("hard", "soft"),
         ("wet", "dry"), ("open", "closed"), ("light", "dark"), ("true", "false"), ("happy", "sad"), ("long", "short"),
         ("win", "lose"), ("strong", "weak"), ("full", "empty"), ("clean", "dirty"), ("heavy", "light"),
         ("thick", "thin"), ("love", "hate"), ("buy", "sell"), ("push", "pull"), ("friend", "enemy"),
         ("begin", "end"), ("question", "answer"), ("inside", "outside"), ("safe", "dangerous")]
answers = [b for _, b in pairs]
rows = [{"word": a, "answer": b, "options": [b, answers[(i + 11) % len(answers)]][::1 - 2 * (i % 2)]}
        for i, (a, b) in enumerate(pairs)]
task, splits = jp.task_from_rows(rows, template="{prompt} The opposite of {word} is", target=" {answer}",
                                 name="opposites", hard_prompt="Antonyms.", answer="choice", choices_field="options",
                                 split_fractions=(0.0, 0.25))
method = jp.make_method("soft", length=4)
session = jp.Session(model, frozen, tokenizer, task, method)


def accuracy(prompt) -> float:  # None: the written prompt
    scores = jp.score_choices(session, prompt, splits["test"])
    return float(np.mean([r["options"][int(np.argmax(s))] == r["answer"] for s, r in zip(scores, splits["test"])]))


# a loss of one's own: the right answer at least 2 nats more likely than the other candidate
def batch_of(answer):
    encoded = [jp.encode(task.template, {**r, "answer": answer(r)}, tokenizer, method) for r in splits["train"]]
    return jp.collate(encoded, tokenizer.pad_token_id, pad_to=jp.longest(encoded))


right = batch_of(lambda r: r["answer"])
wrong = batch_of(lambda r: next(o for o in r["options"] if o != r["answer"]))


def margin_loss(prompt, frozen):
    gap = (jp.target_logprobs(model, frozen, method, prompt, right)
           - jp.target_logprobs(model, frozen, method, prompt, wrong))
    return jnp.mean(jax.nn.relu(2.0 - gap))


prompt = method.init(jax.random.key(0), model, frozen, task.template.n_virtual(method.length))
optimizer = jp.make_optimizer(jp.OptimizerConfig(lr=0.1), prompt)
opt_state = optimizer.init(prompt)


@jax.jit
def step(prompt, opt_state, frozen):
    loss, grads = jax.value_and_grad(margin_loss)(prompt, frozen)
    updates, opt_state = optimizer.update(grads, opt_state, prompt)
    return optax.apply_updates(prompt, updates), opt_state, loss


print(f"accuracy: written prompt {accuracy(None):.2f}, learned prompt before training {accuracy(prompt):.2f}")
for _ in range(30):
    prompt, opt_state, loss = step(prompt, opt_state, frozen)
print(f"margin loss after 30 steps {loss:.3f}, accuracy {accuracy(prompt):.2f}")

# the prompt as a PEFT adapter; PEFT's forward pass computes the logits jaxprompt does
jp.export_peft("opposites-adapter", method, prompt, model, frozen, task.template, base_model=jp.DEFAULT_MODEL)

import peft  # noqa: E402  (the [torch] extra)
import torch  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

base = AutoModelForCausalLM.from_pretrained(jp.DEFAULT_MODEL, dtype=torch.float32)
peft_model = peft.PeftModel.from_pretrained(base, "opposites-adapter").eval()
example = jp.encode(task.template, {"word": "cold", "answer": "", "options": []}, tokenizer, method, with_target=False)
ours = jp.prompted_logits(model, frozen, method, prompt, jp.collate([example], tokenizer.pad_token_id))[0]
ours = np.asarray(ours[:len(example.tokens)])  # padded on the right to a length bucket
text_ids = [t for t, s in zip(example.tokens, example.slots) if s < 0]
with torch.no_grad():
    theirs = peft_model(input_ids=torch.tensor([text_ids])).logits[0, -len(text_ids):].numpy()
print(f"PEFT's logits differ from jaxprompt's by at most {np.abs(ours[-len(text_ids):] - theirs).max():.1e}")
