"""One item of a checklist (`sftc preflight`, the GPU plan of the validation report, the `gpu_preflight` check):
what it needs, what it found, the fix, and which machine it speaks of. One shape for every reader: the command's
table and JSON, the report's Markdown and JSON, the asset check's metadata.
"""

from __future__ import annotations

import textwrap
from dataclasses import asdict, dataclass
from typing import Literal

Status = Literal["PASS", "FAIL", "WARN", "NOT CHECKED"]
PASS, FAIL, WARN, NOT_CHECKED = "PASS", "FAIL", "WARN", "NOT CHECKED"
# Which machine a check speaks of: the node running it, the planned GPU run (known on any node), the cluster, or the
# toy profile's chain (the nightly CPU run that rehearses the GPU run).
THIS_NODE, GPU_PLAN, TARGET_CLUSTER, TOY_CHAIN = "this node", "GPU plan", "target cluster", "toy chain"


@dataclass(frozen=True)
class Check:
    name: str
    scope: str
    status: Status
    needed: str
    found: str
    fix: str = ""  # what to change (file and field), where the check did not pass
    details: tuple[str, ...] = ()  # the arithmetic behind the verdict, one line each

    def as_dict(self) -> dict:
        return {**asdict(self), "details": list(self.details)}

    @classmethod
    def from_dict(cls, data: dict) -> Check:
        return cls(**{**data, "details": tuple(data.get("details", ()))})

    @property
    def line(self) -> str:
        """One line for people: status, name, what was found against what is needed, and the fix."""
        text = f"{self.status} {self.name} ({self.scope}): {self.found}; needed: {self.needed}"
        return text + (f". Fix: {self.fix}" if self.fix and self.status != PASS else "")


def failures(checks: list[Check] | tuple[Check, ...]) -> list[Check]:
    return [check for check in checks if check.status == FAIL]


def checks_table(checks: list[Check] | tuple[Check, ...], width: int = 110) -> str:
    """A plain-text table: check, scope, status, found (needed and the fix below each row that did not pass); the
    text columns wrap within `width` characters so that a row stays readable in a terminal."""
    rows = [("check", "scope", "status", "found"), *((c.name, c.scope, c.status, c.found) for c in checks)]
    widths = [max(len(row[c]) for row in rows) for c in range(3)]
    pad = " " * (sum(widths) + 6)

    def wrapped(text: str, lead: str = "") -> list[str]:
        # A hanging indent under the text's own start; long words (paths) are kept whole.
        lines = textwrap.wrap(
            text, max(30, width - len(pad) - len(lead)), break_long_words=False, break_on_hyphens=False
        ) or [""]
        return [lead + lines[0], *(" " * len(lead) + line for line in lines[1:])]

    lines = []
    for index, row in enumerate(rows):
        found, *more = wrapped(row[3])
        lines.append("  ".join([*(row[c].ljust(widths[c]) for c in range(3)), found]))
        lines += [pad + line for line in more]
        check = checks[index - 1] if index else None
        if check is not None and check.status not in (PASS,):
            lines += [pad + line for line in wrapped(check.needed, "needed: ")]
            if check.fix:
                lines += [pad + line for line in wrapped(check.fix, "fix: ")]
    lines.insert(1, "-" * max(len(line) for line in lines))
    return "\n".join(lines)
