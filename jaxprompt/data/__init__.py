"""Text to arrays: tasks, templates, the tokenizer, batches, choice encoding, and the built-in data.

    tasks.py       a task (template, target, written prompt, data) and its deterministic splits;
                   the built-in tasks, task files, tasks from Python rows
    templates.py   a template + an example -> token ids, prompt slots and a target mask
    tokenizer.py   the checkpoint's tokenizer with BOS / EOS / pad as transformers frames them
    batches.py     length buckets, collation, deterministic batch orders
    choices.py     choice tasks: a context and its candidates' ids, collated
    builtin/       the built-in tasks' data (WordNet 3.0 derived, with its licence)

May import: jaxprompt.models, jaxprompt.settings, jaxprompt.files.
"""
