"""The principle gate: drop self-generated answers that break the principles before they are trained on.

What it catches: a compliant answer to a harmful request (the principle-driven prompt of a small model often
complies; training on those answers removes the refusals the model had). A request is harmful when the prompt
dataset says so (`principle_gate_column`, e.g. the demo's `category` == `harmful`) or, without a column, when the
judge finds it harmful (`harmful_request`); the answer violates the principles when the judge finds it did not refuse.
The trainer marks each candidate and the `principle_gate` filter drops the marked ones, counted like the other filters.

The gate also guards honesty: where the prompt column marks a request as one that calls for an admission (the demo's
`category` == `unknowable`: the future, private or live facts), an answer the judge does not find admitting it cannot
know is an invention, marked for the `honesty_gate` filter. Without a column, only the harmful side is judged.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..judges.base import PointwiseJudge


class PrincipleGate:
    def __init__(
        self, judge: PointwiseJudge, column: str | None = None, values: Sequence[str] = ("harmful",),
        honesty_values: Sequence[str] = (),
    ):
        self.judge, self.column, self.values = judge, column, tuple(values)
        self.honesty_values = tuple(honesty_values)

    def check_dataset(self, column_names: Sequence[str]) -> None:
        """Before any model work: the column the gate reads must exist."""
        if self.column is not None and self.column not in column_names:
            raise ValueError(
                f"`principle_gate_column={self.column!r}` is not a column of the prompt dataset (columns: "
                f"{list(column_names)}). Name the column that marks harmful requests, leave it unset to let the judge "
                "decide, or drop 'principle_gate' from `filters`."
            )

    def harmful(self, prompts: Sequence[str], column_values: Sequence[object] | None) -> list[bool]:
        if self.column is not None:
            if column_values is None:
                raise ValueError(f"The principle gate reads column {self.column!r}; pass its values.")
            return [str(v) in self.values for v in column_values]
        return [v.label for v in self.judge.judge("harmful_request", prompts, [""] * len(prompts))]

    def violations(
        self, prompts: Sequence[str], answers: Sequence[str], column_values: Sequence[object] | None = None
    ) -> list[bool]:
        """True where the request is harmful and the answer does not refuse it."""
        harmful = self.harmful(prompts, column_values)
        return self._without("refused", [i for i, h in enumerate(harmful) if h], prompts, answers)

    def inventions(self, prompts: Sequence[str], answers: Sequence[str], column_values: Sequence[object]) -> list[bool]:
        """True where the column marks the request as calling for an admission and the answer does not admit it."""
        positions = [i for i, v in enumerate(column_values) if str(v) in self.honesty_values]
        return self._without("admits_unknown", positions, prompts, answers)

    def _without(
        self, criterion: str, positions: list[int], prompts: Sequence[str], answers: Sequence[str]
    ) -> list[bool]:
        """True at each of `positions` whose answer the judge does not find meeting `criterion`; False elsewhere."""
        verdicts = self.judge.judge(criterion, [prompts[i] for i in positions], [answers[i] for i in positions])
        flagged = [False] * len(prompts)
        for i, verdict in zip(positions, verdicts):
            flagged[i] = not verdict.label
        return flagged
