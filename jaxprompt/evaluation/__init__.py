"""How good a prompt is: test loss, exact match, BLEU/ROUGE-L, accuracy by likelihood; lm-eval;
what a prompt "says".

    evaluate.py    loss, generation metrics and sample tables of learned and written prompts
    results.py     an evaluation's results, a population's mean ± std, their tables
    choices.py     choice tasks scored by likelihood (rank classification) and their metrics
    lm_eval.py     jaxprompt as an lm-evaluation-harness model (`--model jaxprompt`), chat templates included
    lm_eval_cli.py lm-eval's own command line with that model registered (`jaxprompt-lm-eval`)
    interpret.py   nearest vocabulary tokens, projection to a hard prompt, a PCA plot

May import: jaxprompt.inference, jaxprompt.runs, jaxprompt.models, jaxprompt.data,
jaxprompt.prompts, jaxprompt.session, jaxprompt.precision, jaxprompt.settings, jaxprompt.files
(never training).
"""
