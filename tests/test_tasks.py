"""Tasks: built-in data and splits, task files in every format, and every bad task field named."""

from __future__ import annotations

import json

import pytest

from jaxprompt.data.tasks import BUILTIN, Task, get_task, load_records, split_examples, task_from_dict
from jaxprompt.data.templates import Template, TemplateError
from jaxprompt.settings import SettingError


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


ROWS = [{"word1": "hot", "word2": "cold"}]

BAD_TASK_FILES = [  # (file name, file text, what the one-line error must say)
    ("data.toml", 'template = "{prompt} {word1}"\ntarget = " {word2}"\ndata = 123\n',
     "task key 'data' 123: must be a string"),
    ("template.toml", 'template = 5\ntarget = " {word2}"\ndata = "x.jsonl"\n', "the template must be a string, got 5"),
    ("group.toml", 'template = "{prompt} {word1}"\ntarget = " {word2}"\ndata = "x.jsonl"\ngroup_by = ["colour"]\n',
     "task key 'group_by' names 'colour'"),
    ("group2.toml", 'template = "{prompt} {word1}"\ntarget = " {word2}"\ndata = "x.jsonl"\ngroup_by = "word1"\n',
     "task key 'group_by' 'word1': must be a list of strings"),
    ("slot.toml", 'template = "{prompt:0} {word1}"\ntarget = " {word2}"\ndata = "x.jsonl"\n',
     "needs at least 1 virtual token"),
    ("bad.yaml", 'template: "{prompt} {word1}\n  target: [', "is not valid YAML"),
    ("bad.toml", 'template = "{prompt}', "is not valid TOML"),
    ("fractions.toml", 'template = "{prompt} {word1}"\ntarget = " {word2}"\ndata = "x.jsonl"\nsplit_fractions = [0.5]\n',
     "task key 'split_fractions' 0.5: must be 2 numbers each in [0, 1)"),
    ("fractions2.toml", 'template = "{prompt} {word1}"\ntarget = " {word2}"\ndata = "x.jsonl"\n'
                        'split_fractions = [0.5, 0.5]\n', "must leave examples for training"),
    ("tokens.toml", 'template = "{prompt} {word1}"\ntarget = " {word2}"\ndata = "x.jsonl"\nmax_new_tokens = 0\n',
     "task key 'max_new_tokens' 0: must be an integer >= 1"),
    ("answer.toml", 'template = "{prompt} {word1}"\ntarget = " {word2}"\ndata = "x.jsonl"\nanswer = "sentence"\n',
     "task key 'answer' 'sentence': must be one of word, text"),
    ("list.yaml", '- template\n- target\n', "a task definition is a table of keys"),
    ("notes.txt", 'template = "{prompt} {word1}"\n', "use a .toml, .yaml or .json file"),
]


@pytest.mark.parametrize("name,text,message", BAD_TASK_FILES, ids=[b[0] for b in BAD_TASK_FILES])
def test_a_bad_task_file_is_one_line_naming_the_file_and_the_key(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(TemplateError) as info:
        get_task(str(tmp_path / name))
    text = str(info.value)
    assert message in text and str(tmp_path / name) in text and "\n" not in text, text


def test_task_fields_are_checked_in_python_too():
    template = Template("{prompt} {a}", " {b}")
    with pytest.raises(SettingError, match="task key 'max_new_tokens' -1: must be an integer >= 1"):
        Task(name="t", template=template, max_new_tokens=-1)
    with pytest.raises(SettingError, match=r"task key 'split_fractions' 0.1,nan: must be 2 numbers each in \[0, 1\)"):
        Task(name="t", template=template, split_fractions=(0.1, float("nan")))


@pytest.mark.parametrize("content,message", [
    (b"a,b\nx,y\nz\n1,2,3\n", "ParserError: Error tokenizing data"),
    (b"a,b\nx,\xff\xfe\n", "(the file must be UTF-8)"),
], ids=["ragged", "not-utf8"])
def test_an_unreadable_csv_names_the_file_and_the_cause(tmp_path, capfd, content, message):
    path = tmp_path / "data.csv"
    path.write_bytes(content)
    with pytest.raises(TemplateError) as info:
        load_records(str(path))
    assert str(path) in str(info.value) and message in str(info.value) and "\n" not in str(info.value)
    assert "Failed to read" not in capfd.readouterr().err  # datasets' own report is not printed besides


def test_builtin_choice_tasks_are_what_wordnet_says(tmp_path):
    """The shipped supersense / antonym-choice files are rebuilt byte for byte from WordNet 3.0, and
    each noun's category is its first sense's lexicographer file, read here from data.noun directly."""
    import os
    import subprocess
    import sys

    from conftest import REPO

    from jaxprompt.data.tasks import BUILTIN

    wordnet = "/usr/share/wordnet"
    if not os.path.isfile(f"{wordnet}/index.noun"):
        pytest.skip("WordNet 3.0 is not installed (apt-get install wordnet-base)")
    subprocess.run([sys.executable, str(REPO / "scripts" / "tools" / "build_task_data.py"), "--out", str(tmp_path)], check=True,
                   capture_output=True)
    for name in ("supersense.tsv", "antonym_choice.jsonl"):
        assert (tmp_path / name).read_bytes() == (REPO / "jaxprompt" / "data" / "builtin" / name).read_bytes()
    lexnames = {"05": "animal", "06": "artifact", "08": "body", "13": "food", "15": "location", "18": "person",
                "20": "plant", "28": "time"}
    with open(f"{wordnet}/data.noun", encoding="latin-1") as f:
        lex = {line[:8]: line[9:11] for line in f if not line.startswith("  ")}
    first = {}
    with open(f"{wordnet}/index.noun", encoding="latin-1") as f:
        for line in f:
            if not line.startswith("  "):
                parts = line.split()
                first[parts[0]] = parts[-int(parts[2])]  # the synset offsets end the line, most frequent first
    task = BUILTIN["supersense"]
    splits = task.load()
    rows = [r for s in splits.values() for r in s]
    assert len(rows) == 2000 and all(" " + r["category"] in task.choices for r in rows)
    for r in rows[:300]:
        assert lexnames[lex[first[r["word"]]]] == r["category"], r
    pairs = {(a, b) for a, b in (line.split("\t") for line in
                                 (REPO / "jaxprompt" / "data" / "builtin" / "antonyms.tsv").read_text().split("\n")[1:] if line)}
    choice = BUILTIN["antonym-choice"]
    for r in [r for s in choice.load().values() for r in s][:500]:
        assert len(r["options"]) == 4 and r["word2"] in r["options"] and (r["word1"], r["word2"]) in pairs
        assert not any((r["word1"], o) in pairs for o in r["options"] if o != r["word2"])


def test_a_task_from_python_rows_splits_as_a_task_file_does(tmp_path):
    from jaxprompt.data.tasks import task_from_file, task_from_rows

    rows = [{"word1": f"w{i}", "word2": f"v{i}"} for i in range(60)]
    task, splits = task_from_rows(rows, template="Here are two {prompt} {word1} and", target=" {word2}", seed=3,
                                  name="mine")
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "mine.toml").write_text('name = "mine"\ntemplate = "Here are two {prompt} {word1} and"\n'
                                        'target = " {word2}"\ndata = "rows.jsonl"\n')
    assert splits == task_from_file(str(tmp_path / "mine.toml")).load(seed=3)
    assert task.name == "mine" and sum(map(len, splits.values())) == 60


def test_choice_candidates_with_the_targets_leading_space_are_refused():
    """Rendered through the target ' {answer}', a candidate ' cold' would be scored as '  cold'."""
    from jaxprompt.data.tasks import task_from_rows

    rows = [{"word": "hot", "answer": "cold", "options": ["cold", "warm"]}] * 20
    task, _ = task_from_rows(rows, template="{prompt} {word} ->", target=" {answer}", answer="choice",
                             choices_field="options")
    assert task.candidates(rows[0]) == [" cold", " warm"]
    with pytest.raises(TemplateError, match="starts with a space and the target ' {answer}' puts one before it"):
        task.candidates({"word": "hot", "answer": " cold", "options": [" cold", " warm"]})
