"""What people's clicks mean for each image: one rule, used by the gallery and by ``sgid filter --filters human``.

* A reviewer's **reject** rejects the image; their **accept** accepts it.
* A reviewer's **best of K** pick for an original keeps the picked image (as an accept) and rejects ("passes
  over") that reviewer's other augmentations of the same original in the same run (000's best-of-3 human
  selection).
* Per reviewer and image, the **last click wins**: an accept after a pick keeps a passed-over image, a pick
  after an accept passes it over.
* An image is *rejected* when any reviewer's verdict on it is a reject, *accepted* when someone accepts (or
  picks) it and nobody rejects it, and *unreviewed* otherwise. Unreviewed images are kept by the filter: nothing
  is dropped that nobody looked at.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sgid.review.db import Decision, Pick

REJECTED, ACCEPTED, UNREVIEWED = "rejected", "accepted", "unreviewed"


@dataclass(frozen=True)
class Status:
    state: str  # rejected | accepted | unreviewed
    rejected_by: tuple[str, ...] = ()
    accepted_by: tuple[str, ...] = ()
    best_by: tuple[str, ...] = ()  # reviewers who picked this image as the best of its original
    passed_over_by: tuple[tuple[str, str], ...] = ()  # (reviewer, the image they picked instead)

    @property
    def reason(self) -> str | None:
        """``human: rejected by NAME`` (names sorted), with the picks that passed this image over."""
        if self.state != REJECTED:
            return None
        reason = f"human: rejected by {', '.join(self.rejected_by)}"
        if self.passed_over_by:
            picks = "; ".join(f"{who} picked {file_name}" for who, file_name in self.passed_over_by)
            reason += f" (best of K: {picks})"
        return reason


UNTOUCHED = Status(UNREVIEWED)


def statuses(
    images: Iterable[tuple[str, str, str | None]], decisions: Sequence[Decision], picks: Sequence[Pick]
) -> dict[tuple[str, str], Status]:
    """Status of every reviewed image, keyed by (run, file_name); ``images`` are (run, file_name, source)."""
    # each reviewer's latest verdict per image: (time, "accept" | "reject" | "best" | "passed", the pick)
    verdicts: dict[tuple[str, str], dict[str, tuple[float, str, str | None]]] = {}
    for d in decisions:
        verdicts.setdefault((d.run, d.file_name), {})[d.reviewer] = (d.time, d.decision, None)
    picked: dict[tuple[str, str], list[Pick]] = {}
    for p in picks:
        picked.setdefault((p.run, p.source), []).append(p)
    found: dict[tuple[str, str], Status] = {}
    for run, image, source in images:
        key = (run, image)
        mine = verdicts.get(key, {})
        for p in picked.get((run, source), []) if source is not None else []:
            if p.reviewer not in mine or mine[p.reviewer][0] <= p.time:
                mine = {**mine, p.reviewer: (p.time, "best" if p.file_name == image else "passed", p.file_name)}
        if not mine:
            continue
        no = tuple(sorted(r for r, (_, v, _) in mine.items() if v in ("reject", "passed")))
        yes = tuple(sorted(r for r, (_, v, _) in mine.items() if v in ("accept", "best")))
        state = REJECTED if no else ACCEPTED if yes else UNREVIEWED
        found[key] = Status(
            state,
            no,
            yes,
            tuple(sorted(r for r, (_, v, _) in mine.items() if v == "best")),
            tuple(sorted((r, str(pick)) for r, (_, v, pick) in mine.items() if v == "passed")),
        )
    return found
