"""Tasks: a template, a target, a written-prompt baseline, and data with deterministic splits.

Built-in: `antonyms` (WordNet 3.0 antonym pairs), `paraphrase` (WordNet example sentences
with a word replaced by a synonym), and two choice tasks: `supersense` (a noun's lexicographer
category among 8) and `antonym-choice` (the antonym among 4 words of the same part of speech). Users define their own in a TOML/YAML file:

    name = "capitals"
    template = "The capital of {prompt} {country} is"
    target = " {capital}"
    hard_prompt = "the country's capital"     # the written-prompt baseline
    data = "capitals.jsonl"                   # JSON/JSONL/CSV/Parquet, a saved datasets dir, or a Hub id
    group_by = ["country"]                    # examples sharing these never straddle a split
    answer = "word"                           # exact match on the first word ("word") or the line ("text")

A choice task (`answer = "choice"`) is scored by likelihood (evaluation/choices.py): every example chooses
among fixed candidates (`choices = [" yes", " no", " maybe"]`, verbalizers; the target renders the
gold one) or among its own (`choices_field = "options"`: each option is rendered through the
target, whose one field holds the gold option or its index in the list).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
from typing import Any, ClassVar

from jaxprompt.data.templates import Template, TemplateError
from jaxprompt.settings import AT_LEAST_1, Range, SettingError, Settings, one_line, setting

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "builtin")
SPLITS = ("train", "validation", "test")


@dataclasses.dataclass(frozen=True)
class Task(Settings):
    """A task; its keys are checked like every other setting (config.validate) on construction."""

    LABEL: ClassVar[str] = "task key '{name}'"

    name: str = setting(help="the task's name")
    template: Template = setting(help="input with {field} and {prompt} placeholders, and its target")
    hard_prompt: str = setting("", "the written prompt the learned one is compared with")
    data: str = setting("", "JSON/JSONL/CSV/TSV/Parquet file, a saved datasets directory, or a Hub dataset id")
    answer: str = setting("word", "exact match on the first word of the generation, or on its first line; "
                          "choice: the most likely of the candidates (evaluation/choices.py)", choices=("word", "text", "choice"))
    choices: tuple[str, ...] = setting((), "answer = choice: the candidates every example chooses among, as "
                                       "they follow the input (e.g. [' yes', ' no', ' maybe'])")
    choices_field: str | None = setting(None, "answer = choice: the field holding each example's own candidates "
                                        "(each rendered through the target)")
    max_new_tokens: int = setting(8, "tokens generated per example in evaluation", range=AT_LEAST_1)
    group_by: tuple[str, ...] = setting((), "fields whose values define a split group", shown_default="all fields")
    split_fractions: tuple[float, float] = setting((0.1, 0.15), "validation and test fractions",
                                                   range=Range(0, 1, high_open=True))
    description: str = setting("", "one line shown by `jaxprompt tasks`")
    data_format: str | None = setting(None, "data format", shown_default="from the file extension",
                                      choices=("json", "csv", "parquet"))

    def check(self) -> None:
        self.template.require_prompt()
        unknown = [f for f in self.group_by if f not in self.template.fields]
        if unknown:
            raise TemplateError(f"task key 'group_by' names {unknown[0]!r}, which the template does not use "
                                f"(fields: {', '.join(self.template.fields)})")
        self._check_choices()
        if sum(self.split_fractions) >= 1:
            raise TemplateError(f"task key 'split_fractions' {list(self.split_fractions)}: validation + test "
                                "must leave examples for training (sum < 1)")

    def _check_choices(self) -> None:
        if self.answer != "choice":
            if self.choices or self.choices_field:
                raise TemplateError("task keys 'choices' / 'choices_field' need answer = \"choice\"")
            return
        if bool(self.choices) == bool(self.choices_field):
            raise TemplateError("a choice task (answer = \"choice\") needs exactly one of 'choices' (a non-empty "
                                "list of candidates) or 'choices_field' (the field holding each example's)")
        if self.choices_field and len(self.template.target_fields) != 1:
            raise TemplateError(f"with 'choices_field' the target {self.template.target!r} must use exactly one "
                                "field (each candidate is rendered in its place)")
        if len(set(self.choices)) != len(self.choices):
            raise TemplateError(f"task key 'choices' {list(self.choices)} repeats a candidate")

    @property
    def fields(self) -> tuple[str, ...]:
        return self.template.fields

    def candidates(self, row: dict) -> list[str]:
        """A choice task's candidate continuations for `row` (the fixed ones, or the row's own
        rendered through the target)."""
        if self.choices:
            return list(self.choices)
        options = row.get(self.choices_field)
        if not isinstance(options, (list, tuple)) or not options:
            raise TemplateError(f"task {self.name!r}: field {self.choices_field!r} must hold a non-empty list of "
                                f"candidates, got {options!r}")
        field = self.template.target_fields[0]
        before = self.template.target.split("{" + field, 1)[0]
        for option in options:
            if isinstance(option, str) and before[-1:].isspace() and option[:1].isspace():
                raise TemplateError(f"task {self.name!r}: the candidate {option!r} starts with a space and the "
                                    f"target {self.template.target!r} puts one before it, so it would be scored as "
                                    f"{before + option!r}: give the candidates without their leading space")
        return [self.template.render_target({**row, field: o}) for o in options]

    def gold_index(self, row: dict) -> int:
        """The index of `row`'s gold candidate; a gold answer outside the candidates is refused."""
        candidates = self.candidates(row)
        gold = self.template.render_target(row)
        if gold not in candidates:
            raise TemplateError(f"task {self.name!r}: the gold answer {gold!r} is not among the candidates "
                                f"{candidates} (row {row})")
        return candidates.index(gold)

    def with_gold(self, row: dict) -> dict:
        """`row` with a per-example gold index (an int in the target's field) replaced by that option."""
        field = self.template.target_fields[0]
        value = row.get(field)
        if self.choices_field and isinstance(value, int) and not isinstance(value, bool):
            options = row.get(self.choices_field)
            if isinstance(options, (list, tuple)) and not 0 <= value < len(options):
                raise TemplateError(f"task {self.name!r}: gold index {value} is outside the {len(options)} "
                                    f"candidates of row {row}")
            if isinstance(options, (list, tuple)):
                row = {**row, field: options[value]}
        self.gold_index(row)
        return row

    def load(self, seed: int = 0) -> dict[str, list[dict]]:
        """train / validation / test example lists. Deterministic for a given `seed`."""
        return self.split(load_records(self.data, self.data_format), seed)

    def split(self, rows: list[dict], seed: int = 0) -> dict[str, list[dict]]:
        """`rows` (dicts of the template's fields) as train / validation / test lists, as `load`
        splits a task's data file: by a hash of each row's group (`group_by`), deterministic for a
        given `seed`; a row's own `_split` key keeps it where it says."""
        rows = [dict(r) for r in rows]
        if self.answer == "choice":
            rows = [self.with_gold(r) for r in rows]
        return split_examples(rows, self, seed)

# ---- built-in tasks ----------------------------------------------------------------------------

BUILTIN = {
    "antonyms": Task(
        name="antonyms",
        template=Template("Here are two {prompt} {word1} and", " {word2}"),
        hard_prompt="antonyms",
        data=os.path.join(DATA_DIR, "antonyms.tsv"),
        data_format="csv",
        answer="word",
        max_new_tokens=4,
        group_by=("word1", "word2"),  # a pair and its reverse stay on the same side
        description="English antonym pairs from WordNet 3.0 (6,622 ordered pairs)",
    ),
    "paraphrase": Task(
        name="paraphrase",
        template=Template("{prompt} {sentence} Paraphrase:", " {paraphrase}"),
        hard_prompt="Rewrite the sentence with a synonym.",
        data=os.path.join(DATA_DIR, "paraphrase.jsonl"),
        answer="text",
        max_new_tokens=32,
        group_by=("sentence",),
        description="WordNet example sentences and the same sentence with a synonym (lexical paraphrase)",
    ),
    "supersense": Task(
        name="supersense",
        template=Template("{prompt} {word} is a kind of", " {category}"),
        hard_prompt="Category (animal, artifact, body, food, location, person, plant or time):",
        data=os.path.join(DATA_DIR, "supersense.tsv"),
        data_format="csv",
        answer="choice",
        choices=(" animal", " artifact", " body", " food", " location", " person", " plant", " time"),
        group_by=("word",),
        description="a WordNet 3.0 noun -> the supersense of its first sense, among 8 (2,000 nouns)",
    ),
    "antonym-choice": Task(
        name="antonym-choice",
        template=Template("{prompt} {word1} is the opposite of", " {word2}"),
        hard_prompt="antonyms:",
        data=os.path.join(DATA_DIR, "antonym_choice.jsonl"),
        answer="choice",
        choices_field="options",
        group_by=("word1", "word2"),  # a pair and its reverse stay on the same side
        description="the antonym among 4 WordNet 3.0 words of the same part of speech (6,622 questions)",
    ),
}


def get_task(name_or_path: str) -> Task:
    """A built-in task by name, or a task defined in a TOML / YAML / JSON file."""
    if name_or_path in BUILTIN:
        return BUILTIN[name_or_path]
    if os.path.isfile(name_or_path):
        return task_from_file(name_or_path)
    raise TemplateError(
        f"unknown task {name_or_path!r}: built-in tasks are {', '.join(BUILTIN)}, or pass a task file (.toml/.yaml)"
    )


def task_from_file(path: str) -> Task:
    """A task defined in a TOML / YAML / JSON file; every error names the file."""
    readers = {".toml": "TOML", ".yaml": "YAML", ".yml": "YAML", ".json": "JSON"}
    kind = readers.get(os.path.splitext(path)[1].lower())
    if kind is None:
        raise TemplateError(f"task file {path}: use a .toml, .yaml or .json file")
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
        if kind == "TOML":
            import tomllib

            spec = tomllib.loads(text)
        elif kind == "YAML":
            import yaml

            spec = yaml.safe_load(text)
        else:
            spec = json.loads(text)
    except Exception as e:  # UnicodeDecodeError, TOMLDecodeError, YAMLError, JSONDecodeError
        raise TemplateError(f"task file {path} is not valid {kind}: {one_line(e)}") from None
    try:
        return task_from_dict(spec, base_dir=os.path.dirname(os.path.abspath(path)))
    except (TemplateError, SettingError) as e:
        raise TemplateError(f"task file {path}: {e}") from None


def task_from_rows(rows: list[dict], template: str, target: str, seed: int = 0, **keys
                   ) -> tuple[Task, dict[str, list[dict]]]:
    """A task over rows held in Python (dicts of the template's fields), and their split into
    train / validation / test, as a task file's data would be split. `keys`: any task key (name,
    hard_prompt, answer, choices, choices_field, max_new_tokens, group_by, split_fractions)."""
    task = task_from_dict({"template": template, "target": target, "data": "", **keys})
    return task, task.split(rows, seed)


def task_from_dict(spec: dict[str, Any], base_dir: str = ".") -> Task:
    if not isinstance(spec, dict):
        raise TemplateError(f"a task definition is a table of keys (template, target, data, ...), "
                            f"got {type(spec).__name__}")
    spec = dict(spec)
    for key in ("template", "target", "data"):
        if key not in spec:
            raise TemplateError(f"task definition is missing {key!r}")
    known = {f.name for f in dataclasses.fields(Task)} | {"target"}
    unknown = set(spec) - known
    if unknown:
        raise TemplateError(f"unknown task key(s) {sorted(unknown)}; known: {sorted(known)}")
    template = Template(spec.pop("template"), spec.pop("target"))
    spec = {k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()}
    try:
        task = Task(name=spec.pop("name", "custom"), template=template, **spec)
    except SettingError as e:
        raise TemplateError(str(e)) from None
    if not os.path.isabs(task.data) and os.path.exists(os.path.join(base_dir, task.data)):
        task = dataclasses.replace(task, data=os.path.join(base_dir, task.data))
    return task


# ---- data ------------------------------------------------------------------------------------

def load_records(source: str, data_format: str | None = None) -> list[dict]:
    """Rows from a local file, a `save_to_disk` directory, or a Hub dataset id, through `datasets`."""
    import datasets

    datasets.disable_progress_bars()
    if os.path.isdir(source):
        loaded = datasets.load_from_disk(source)
    elif os.path.isfile(source):
        ext = data_format or {".jsonl": "json", ".json": "json", ".csv": "csv", ".tsv": "csv",
                              ".parquet": "parquet"}.get(os.path.splitext(source)[1])
        if ext is None:
            raise TemplateError(f"cannot tell the format of {source}: use .jsonl/.json/.csv/.tsv/.parquet")
        if os.path.getsize(source) == 0:
            raise TemplateError(f"the dataset {source} is empty")
        kwargs = {"delimiter": "\t"} if source.endswith(".tsv") else {}
        verbosity = datasets.logging.get_verbosity()
        datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # its "Failed to read" lines: ours says it
        try:
            loaded = datasets.load_dataset(ext, data_files=source, split="train", **kwargs)
        except Exception as e:  # datasets wraps the reader's error: report the root cause
            while e.__cause__ is not None or e.__context__ is not None:
                e = e.__cause__ or e.__context__
            hint = " (the file must be UTF-8)" if isinstance(e, UnicodeDecodeError) or "UTF8" in str(e) else ""
            raise TemplateError(f"could not read {source} as {ext}: {one_line(e)}{hint}") from None
        finally:
            datasets.logging.set_verbosity(verbosity)
    else:
        try:
            loaded = datasets.load_dataset(source)
        except Exception as e:
            raise TemplateError(
                f"dataset {source!r} is not a local file or directory and could not be loaded from the Hub "
                f"({type(e).__name__}); pass a local JSON/JSONL/CSV/Parquet file"
            ) from e
    if isinstance(loaded, datasets.DatasetDict):  # explicit splits are kept as a "split" column
        rows = []
        for split, ds in loaded.items():
            rows.extend({**r, "_split": _normalise_split(split)} for r in ds)
        return rows
    return [dict(r) for r in loaded]


def _normalise_split(name: str) -> str:
    return {"valid": "validation", "val": "validation", "dev": "validation"}.get(name, name)


def _bucket(key: str, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_examples(rows: list[dict], task: Task, seed: int = 0) -> dict[str, list[dict]]:
    """Deterministic train/validation/test split by a hash of each example's group.

    The group is the sorted values of `task.group_by` (default: all template fields), so e.g. an
    antonym pair and its reverse never fall on both sides. Rows with an explicit split keep it.
    """
    if not rows:
        raise TemplateError(f"task {task.name!r}: the dataset {task.data!r} is empty")
    missing = [f for f in task.fields if f not in rows[0]]
    if missing:
        raise TemplateError(
            f"task {task.name!r}: the data has no field {missing[0]!r} (fields: {', '.join(k for k in rows[0] if k != '_split')})"
        )
    group_fields = task.group_by or task.fields
    target_fields = task.template.target_fields
    val_frac, test_frac = task.split_fractions
    out: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for r in rows:
        if any(r.get(f) in (None, "") for f in target_fields):
            continue  # a row without a target teaches nothing
        split = r.pop("_split", None)
        if split not in out:
            u = _bucket("\x1f".join(sorted(str(r[f]) for f in group_fields)), seed)
            split = "test" if u < test_frac else "validation" if u < test_frac + val_frac else "train"
        out[split].append(r)
    if not out["train"]:
        raise TemplateError(f"task {task.name!r}: no training examples after splitting {len(rows)} rows")
    for i, split in enumerate(SPLITS):  # file order (often sorted) says nothing; shuffle reproducibly
        random.Random(seed * 10 + i).shuffle(out[split])
    return out
