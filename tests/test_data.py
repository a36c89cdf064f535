"""Templates, tasks and the data pipeline."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jaxprompt.data import (Batches, Encoded, Template, TemplateError, collate, common_prefix_length, encode,
                            eval_batches)
from jaxprompt.tasks import BUILTIN, get_task, split_examples, task_from_dict


def test_template_errors():
    with pytest.raises(TemplateError, match="has no {prompt} placeholder"):
        Template("Here are two {word1} and", " {word2}").require_prompt()
    with pytest.raises(TemplateError, match="malformed placeholder"):
        Template("Here are {prompt} {word1 and", " {word2}")
    with pytest.raises(TemplateError, match="uses no field"):
        Template("{prompt} {x}", " always")
    with pytest.raises(TemplateError, match="cannot contain {prompt}"):
        Template("{prompt} {x}", " {prompt}{y}")
    t = Template("Here are two {prompt} {word1} and", " {word2}")
    with pytest.raises(TemplateError, match="example has no field 'word1'"):
        t.pieces({"w1": "hot", "word2": "cold"}, 3)


def test_pieces_and_slots(gpt2_tokenizer):
    t = Template("Here are two {prompt} {word1} and", " {word2}")
    assert t.pieces({"word1": "hot", "word2": "cold"}, 3) == ["Here are two", 3, " hot and"]
    assert t.pieces({"word1": "hot", "word2": "cold"}, 3, virtual=False) == ["Here are two hot and"]
    e = encode(t, {"word1": "hot", "word2": "cold"}, gpt2_tokenizer, 3)
    assert e.slots == [-1, -1, -1, 0, 1, 2, -1, -1, -1] and e.n_target == 1
    assert e.tokens[-3:] == gpt2_tokenizer.encode(" hot and cold")
    hard = encode(t, {"word1": "hot", "word2": "cold"}, gpt2_tokenizer, 3, hard_prompt="antonyms")
    assert hard.tokens == [4342, 389, 734, 281, 1122, 88, 907, 3024, 290, 4692]  # GPT-2's own tokenisation
    multi = Template("{prompt:2} Q: {x} {prompt} A:", " {y}")
    assert multi.n_virtual(4) == 6
    m = encode(multi, {"x": "a", "y": "b"}, gpt2_tokenizer, 4)
    assert [s for s in m.slots if s >= 0] == list(range(6)) and m.slots[:2] == [0, 1]


def test_bos_comes_after_a_leading_prompt(gpt2_tokenizer):
    """An OPT-style tokenizer adds BOS; PEFT's layout is [virtual tokens, BOS, text]."""
    import copy

    tok = copy.copy(gpt2_tokenizer)
    tok.add_bos, tok.bos_token_id = True, 7
    lead = encode(Template("{prompt} {x} =", " {y}"), {"x": "a", "y": "b"}, tok, 2)
    assert lead.tokens[2] == 7 and lead.slots[:3] == [0, 1, -1]
    infix = encode(Template("Q {prompt} {x} =", " {y}"), {"x": "a", "y": "b"}, tok, 2)
    assert infix.tokens[0] == 7


def test_loss_mask_covers_exactly_the_target_tokens(gpt2_tokenizer):
    t = Template("Here are two {prompt} {word1} and", " {word2}")
    rows = [{"word1": "hot", "word2": "cold"}, {"word1": "utopia", "word2": "dystopia"},
            {"word1": "aphelion", "word2": "perihelion"}]
    examples = [encode(t, r, gpt2_tokenizer, 5) for r in rows]
    for padding in ("right", "left"):
        batch = collate(examples, 50256, padding)
        for b, r in enumerate(rows):
            target_ids = batch["tokens"][b][batch["loss_mask"][b] == 1]
            assert list(target_ids) == gpt2_tokenizer.encode(" " + r["word2"])
            k = int(batch["target_weight"][b].sum())
            assert list(batch["tokens"][b][batch["target_index"][b, :k]]) == list(target_ids)
        assert batch["tokens"].shape[1] == 16 and batch["target_index"].shape[1] == 4  # buckets


def test_batches_are_a_pure_function_of_the_step():
    examples = [Encoded([i, i], [-1, -1], 1) for i in range(10)]
    a, b = Batches(examples, 4, 0, seed=1), Batches(examples, 4, 0, seed=1)
    assert [a.indices(s) for s in range(7)] == [b.indices(s) for s in reversed(range(7))][::-1]
    seen = [i for s in range(5) for i in a.indices(s)]  # 20 draws = two epochs, each a permutation
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:]) == list(range(10))
    assert Batches(examples, 4, 0, seed=2).indices(0) != a.indices(0)
    with pytest.raises(TemplateError, match="training set is empty"):
        Batches([], 4, 0)


def test_eval_batches_fill_the_last_batch_with_zero_weight_rows():
    examples = [Encoded([1, 2, 3], [-1, -1, -1], 1) for _ in range(5)]
    batches = list(eval_batches(examples, 4, 0))
    assert [idx for idx, _ in batches] == [[0, 1, 2, 3], [4]]
    last = batches[-1][1]
    assert last["tokens"].shape[0] == 4 and last["target_weight"][1:].sum() == 0


def test_common_prefix_length(gpt2_tokenizer):
    t = Template("Here are two {prompt} {word1} and", " {word2}")
    examples = [encode(t, {"word1": a, "word2": b}, gpt2_tokenizer, 4) for a, b in (("hot", "cold"), ("up", "down"))]
    assert common_prefix_length(examples) == 3 + 4
    same = [encode(t, {"word1": "hot", "word2": w}, gpt2_tokenizer, 4) for w in ("cold", "chilly")]
    assert common_prefix_length(same) == len(same[0]) - same[0].n_target - 1  # never into the targets


def test_antonym_splits_are_deterministic_and_keep_pairs_together():
    task = BUILTIN["antonyms"]
    a, b = task.load(seed=0), task.load(seed=0)
    assert a == b
    assert sum(map(len, a.values())) == 6622
    assert len(a["train"]) > 4000 and len(a["test"]) > 800 and len(a["validation"]) > 500
    side = {}
    for split, rows in a.items():
        for r in rows:
            side[(r["word1"], r["word2"])] = split
    for (w1, w2), split in side.items():
        assert side.get((w2, w1), split) == split  # a pair and its reverse on the same side
    assert task.load(seed=1)["test"] != a["test"]


def test_custom_task_files_and_data_formats(tmp_path):
    rows = [{"country": c, "capital": k} for c, k in
            [("France", "Paris"), ("Spain", "Madrid"), ("Italy", "Rome"), ("Peru", "Lima"), ("Chad", "N'Djamena"),
             ("Cuba", "Havana"), ("Fiji", "Suva"), ("Iran", "Tehran"), ("Iraq", "Baghdad"), ("Laos", "Vientiane")]]
    (tmp_path / "caps.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "caps.csv").write_text("country,capital\n" + "".join(f"{r['country']},{r['capital']}\n" for r in rows))
    (tmp_path / "task.toml").write_text(
        'name = "capitals"\ntemplate = "The capital of {prompt} {country} is"\ntarget = " {capital}"\n'
        'hard_prompt = "the country"\ndata = "caps.jsonl"\nsplit_fractions = [0.2, 0.2]\n')
    (tmp_path / "task.yaml").write_text(
        'name: capitals\ntemplate: "The capital of {prompt} {country} is"\ntarget: " {capital}"\ndata: caps.csv\n')
    import datasets
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    for spec in ("task.toml", "task.yaml"):
        task = get_task(str(tmp_path / spec))
        splits = task.load()
        assert task.name == "capitals" and sum(map(len, splits.values())) == 10
    saved = task_from_dict({"template": "The capital of {prompt} {country} is", "target": " {capital}",
                            "data": str(tmp_path / "saved")})
    assert sum(map(len, saved.load().values())) == 10


def test_bad_task_definitions_and_data(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"a": "x", "b": "y"}\n')
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(TemplateError, match="unknown task 'nope'"):
        get_task("nope")
    with pytest.raises(TemplateError, match="missing 'target'"):
        task_from_dict({"template": "{prompt} {a}", "data": str(tmp_path / "d.jsonl")})
    with pytest.raises(TemplateError, match="has no {prompt} placeholder"):
        task_from_dict({"template": "{a} is", "target": " {b}", "data": str(tmp_path / "d.jsonl")})
    with pytest.raises(TemplateError, match="the data has no field 'word'"):
        task_from_dict({"template": "{prompt} {word}", "target": " {b}", "data": str(tmp_path / "d.jsonl")}).load()
    with pytest.raises(TemplateError, match="empty|no training examples"):
        task_from_dict({"template": "{prompt} {a}", "target": " {b}", "data": str(tmp_path / "empty.jsonl")}).load()
    with pytest.raises(TemplateError, match="unknown task key"):
        task_from_dict({"template": "{prompt} {a}", "target": " {b}", "data": "x", "tempalte": "?"})
    rows = [{"a": "x", "b": ""}, {"a": "y", "b": "z"}]
    task = task_from_dict({"template": "{prompt} {a}", "target": " {b}", "data": "unused", "split_fractions": [0, 0]})
    assert split_examples(rows, task)["train"] == [{"a": "y", "b": "z"}]  # a row without target is dropped


def test_builtin_paraphrase_task_loads():
    splits = BUILTIN["paraphrase"].load()
    row = splits["train"][0]
    assert set(row) == {"sentence", "paraphrase"} and row["sentence"] != row["paraphrase"]
