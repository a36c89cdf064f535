"""What the API refuses, and why: each refusal is one line naming the problem, raised before anything
is computed or written. Runs in seconds on a CPU (the embedded model, no training)."""

import jax

import jaxprompt as jp

config, frozen = jp.load_pretrained(jp.DEFAULT_MODEL)
model, tokenizer, task = jp.Model(config), jp.Tokenizer.load(jp.DEFAULT_MODEL), jp.get_task("antonyms")
method = jp.make_method("soft", length=8)
rows = [{"word1": "hot", "word2": "cold"}, {"word1": "up", "word2": "down"}]


def refused(what, attempt):
    try:
        attempt()
    except (TypeError, ValueError) as e:
        print(f"{what}: refused: {e}")
    else:
        raise AssertionError(f"{what} was accepted")


# encode takes the method: its length, and whether its virtual tokens take the template's positions
refused("encode with a length", lambda: jp.encode(task.template, rows[0], tokenizer, 8))
prefix = jp.make_method("prefix", length=8, tokenizer=tokenizer)  # keys/values: {prompt} stays empty
soft_ids, prefix_ids = (jp.encode(task.template, rows[0], tokenizer, m).tokens for m in (method, prefix))
print(f"positions: soft {len(soft_ids)}, prefix {len(prefix_ids)}")

# a batch carries its shared head (the positions every row shares), and the loss reads it from the batch
encoded = [jp.encode(task.template, r, tokenizer, method) for r in rows]
shared = jp.common_prefix_length(encoded)  # "Here are two" + 8 virtual tokens
batch = jp.collate(encoded, tokenizer.pad_token_id, shared_len=shared)
print(f"shared head: {batch['shared'].shape[-1]} positions")
other = jp.encode(jp.Template("{prompt} The opposite of {word1} is", " {word2}"), rows[0], tokenizer, method)
refused("a shared head the rows do not share", lambda: jp.collate([encoded[0], other], tokenizer.pad_token_id,
                                                                  shared_len=shared))
refused("pad_to shorter than a row", lambda: jp.collate(encoded, tokenizer.pad_token_id, pad_to=4))

# a choice candidate that brings its own space after a target that puts one before it
refused("a doubled space", lambda: jp.task_from_rows(
    [{"word": "hot", "answer": " cold", "options": [" cold", " warm"]}], template="{prompt} The opposite of {word} is",
    target=" {answer}", answer="choice", choices_field="options"))

# make_method builds a method as the command line does, or says what it lacks
refused("pez without a tokenizer", lambda: jp.make_method("pez", length=5))
refused("relaxed without the run's steps", lambda: jp.make_method("relaxed", length=5, tokenizer=tokenizer))
refused("init from text without the text", lambda: jp.make_method("soft", init_from="text", tokenizer=tokenizer))
refused("a setting of another method", lambda: jp.make_method("soft", hidden=64))

# PEFT prompt tuning prepends virtual tokens: a prompt inside its template has no PEFT form
prompt = method.init(jax.random.key(0), model, frozen, task.template.n_virtual(method.length))
refused("PEFT export of a prompt inside its template", lambda: jp.export_peft(
    "antonyms-adapter", method, prompt, model, frozen, task.template, base_model=jp.DEFAULT_MODEL))
