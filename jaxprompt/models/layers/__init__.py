"""The layers every architecture is built from, by topic.

    basic.py       norms, dense, activations, gated MLP
    rotary.py      rotary position embeddings (Su et al. 2021, "RoFormer") and their scalings
    attention.py   attention over [prefix | cache | current] keys: grouped-query heads, sliding
                   windows, soft-capping, adaption-prompt gates; the KV cache and the masks
    stack.py       the scanned decoder stack (remat policies, FSDP gathering)
    bits.py        bf16 weights held as raw 16-bit integers on a CPU, converted where used
    quantized.py   matmul weights held in 8 or 4 bits (`--quantize`), dequantized where used

May import: jaxprompt.precision.
"""
