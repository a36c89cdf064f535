"""A frozen model is a pytree: embed -> transformer -> unembed, float32 logits. Any preset's
parameter count comes from shapes alone."""

import jax.numpy as jnp

import jaxprompt as jp

# an HF id ("meta-llama/Llama-3.2-1B", "Qwen/Qwen3-0.6B", ...) or a checkpoint directory
config, params = jp.load_pretrained(jp.DEFAULT_MODEL, dtype="bfloat16")
tokens = jnp.array([[464, 6697, 286, 3024, 318]])  # "The opposite of hot is"
logits = jp.Model(config).logits(params, tokens)  # [1, 5, V]
print(jp.Model(jp.preset("meta-llama/Llama-3.1-8B")).num_params())  # 8030261248
