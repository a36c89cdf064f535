"""A whole run from Python, with the command line's settings by their flag names: it trains,
evaluates the learned prompt against the written one and writes its run directory."""

import jaxprompt as jp

config = jp.TrainConfig.from_flags(task=("antonyms",), method="ptuning", lr=0.3, steps=20, eval_examples=20)
result = jp.train_prompt(config, jp.RunOptions(out="runs/ptuning", overwrite=True))  # settings nest inside config
print(result.results[-1].summary())

session, prompt, info = jp.load_run("runs/ptuning")  # read back: the model, the prompt, run.json
engine = jp.Engine.of_session(session)
engine.add("antonyms", session, prompt)
print(engine.complete([jp.Request("antonyms", text="hot")])[0].text)
