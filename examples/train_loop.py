"""The functional core as a loop you write yourself, on the embedded model: a frozen pytree, a
prompt built as the command line builds it, a jitted step that takes the frozen weights as an
argument and differentiates the prompt alone, the command line's optimizer, and evaluation. The
last lines train five prompts (seeds) at once: `jax.vmap` over prompts and optimizer states, one
frozen model, one compiled step."""

import jax
import jax.numpy as jnp
import optax

import jaxprompt as jp

config, frozen = jp.load_pretrained(jp.DEFAULT_MODEL)  # the frozen LM: a pytree, never differentiated
model, tokenizer, task = jp.Model(config), jp.Tokenizer.load(jp.DEFAULT_MODEL), jp.get_task("antonyms")
method = jp.make_method("soft", length=8)  # 8 virtual tokens at the template's {prompt}
splits = task.load()
encoded = lambda rows: [jp.encode(task.template, r, tokenizer, method) for r in rows]
train, test = encoded(splits["train"]), encoded(splits["test"][:128])
shared = jp.common_prefix_length(train + test)  # "Here are two" + the prompt: computed once per batch
pad_to = jp.longest(train + test)  # one batch shape: the step compiles once
loss_fn = jp.prompt_loss(model, method)  # (prompt, frozen, batch, rng, step) -> (nll sum, count)
mean_loss = lambda prompt, frozen, batch: jnp.divide(*loss_fn(prompt, frozen, batch, None, 0))
prompt = method.init(jax.random.key(0), model, frozen, task.template.n_virtual(method.length))
optimizer = jp.make_optimizer(jp.OptimizerConfig(lr=0.1), prompt)  # the command line's: AdamW, clipped at norm 1


@jax.jit  # frozen passed in: closed over, its weights would be compiled in as constants
def train_step(prompt, opt_state, frozen, batch):
    loss, grads = jax.value_and_grad(mean_loss)(prompt, frozen, batch)  # gradients for the prompt only
    updates, opt_state = optimizer.update(grads, opt_state, prompt)
    return optax.apply_updates(prompt, updates), opt_state, loss


test_batches = [b for _, b in jp.eval_batches(test, 64, tokenizer.pad_token_id, shared_len=shared, pad_to=pad_to)]
nll_and_count = jax.jit(lambda prompt, frozen, batch: loss_fn(prompt, frozen, batch, None, 0))


def test_loss(prompt):
    sums = [nll_and_count(prompt, frozen, b) for b in test_batches]
    return sum(s for s, _ in sums) / sum(c for _, c in sums)


opt_state = optimizer.init(prompt)
batches = jp.Batches(train, batch_size=16, pad_id=tokenizer.pad_token_id, shared_len=shared, pad_to=pad_to)
print(f"test loss before: {test_loss(prompt):.3f}")
for step in range(40):
    prompt, opt_state, loss = train_step(prompt, opt_state, frozen, batches(step))
print(f"test loss after 40 steps: {test_loss(prompt):.3f}")

# five prompts (seeds) in one compiled step: vmap over prompts and optimizer states, one frozen model
prompts = jax.vmap(lambda k: method.init(k, model, frozen, task.template.n_virtual(method.length)))(
    jax.random.split(jax.random.key(1), 5))
opt_states = jax.vmap(optimizer.init)(prompts)
population_step = jax.jit(jax.vmap(train_step, in_axes=(0, 0, None, None)))
for step in range(40):
    prompts, opt_states, losses = population_step(prompts, opt_states, frozen, batches(step))
losses = jax.vmap(test_loss)(prompts)
print(f"5 seeds: test loss {losses.mean():.3f} ± {losses.std():.3f}")
