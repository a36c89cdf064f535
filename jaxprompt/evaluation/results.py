"""What an evaluation reports: an `EvalResult` per prompt and split (loss, exact match, BLEU /
ROUGE-L, accuracy), a population's mean ± sample standard deviation, and their printed tables.
"""
from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class EvalResult:
    label: str
    n: int
    loss: float
    exact_match: float | None = None
    bleu: float | None = None
    rouge_l: float | None = None
    accuracy: float | None = None  # choice tasks: the most likely candidate is the gold one
    acc_norm: float | None = None  # ... the most likely per UTF-8 byte of the candidate (as written, leading space included)
    per_class: dict | None = None  # fixed candidates: {candidate: {gold, predicted, correct}}
    samples: list[dict] = dataclasses.field(default_factory=list)

    def summary(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "samples"}


METRICS = ("loss", "exact_match", "bleu", "rouge_l", "accuracy", "acc_norm")


def spread(values) -> tuple[float, float] | None:
    """(mean, sample standard deviation) of a metric over a population's members; None where the
    metric was not computed."""
    if any(v is None for v in values):
        return None
    x = np.asarray(values, np.float64)
    return float(x.mean()), (float(x.std(ddof=1)) if len(x) > 1 else 0.0)


@dataclasses.dataclass
class PopulationResult:
    """One prompt evaluated per member of a population (training/population.py): each metric as mean ±
    sample standard deviation over the members. A written prompt is the same for every member
    (they share the test rows), so its spread is 0."""

    label: str
    members: list[EvalResult]

    @property
    def n(self) -> int:
        return self.members[0].n

    def metric(self, name: str) -> tuple[float, float] | None:
        return spread([getattr(r, name) for r in self.members])

    def summary(self) -> dict:
        out = {"label": self.label, "n": self.n, "members": len(self.members)}
        for name in METRICS:
            value = self.metric(name)
            out[name], out[f"{name}_std"] = value if value is not None else (None, None)
        return out

    @property
    def samples(self) -> list[dict]:
        return self.members[0].samples


def population_results(per_member: list[list[EvalResult]]) -> list[PopulationResult]:
    """`evaluate_prompts`' results of a population's members, row by row as mean ± std."""
    return [PopulationResult(r.label, list(rs)) for r, rs in zip(per_member[0], zip(*per_member))]


def learned_label(method: str, length: int, which: str = "best", member: int | None = None) -> str:
    """How tables and results.json name a learned prompt, after training and in `jaxprompt eval`
    alike: "learned: soft P=20 (best)", "learned: soft P=20 (last, member 2)"."""
    return f"learned: {method} P={length} ({which}" + (f", member {member})" if member is not None else ")")


def format_table(results: list[EvalResult | PopulationResult]) -> str:
    """A fixed-width comparison table (written vs learned, ...); a population's metrics as mean ± std."""
    cols = ["label", "n", *METRICS]

    def value(r, c):
        return r.metric(c) if isinstance(r, PopulationResult) and c in METRICS else getattr(r, c)

    def fmt(v):
        if isinstance(v, tuple):
            return f"{v[0]:.4f} ± {v[1]:.4f}"
        return "-" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))

    show = [c for c in cols if any(value(r, c) is not None for r in results)]
    rows = [[fmt(value(r, c)) for c in show] for r in results]
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(show)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths))
    table = "\n".join([line(show), line(["-" * w for w in widths])] + [line(r) for r in rows])
    if "exact_match" in show:  # what it compares is not the whole generation: say so
        table += ("\nexact_match: the generation's first word (answer = \"word\") or first line (answer = \"text\"), "
                  "lowercased, against the reference's")
    return table


def format_samples(result: EvalResult) -> str:
    lines = [f"{'input':<24} {'actual':<24} {'predicted':<24}"]
    for s in result.samples:
        mark = "" if s["match"] else "  x"
        lines.append(f"{s['input'][:24]:<24} {s['actual'][:24]:<24} {s['predicted'][:24]:<24}{mark}")
    return "\n".join(lines)
