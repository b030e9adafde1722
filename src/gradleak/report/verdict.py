"""The report's verdicts, all from one rule: an attacked image is a leak exactly when
:func:`gradleak.metrics.grade` says so (SSIM above τ *and* closer to the original than the attacker's prior;
verbatim recovery for the imprint and analytic attacks). From it: a verdict per client group, the recommended
setting with its accuracy cost against the undefended baseline, and the threat model in one line.

Every function here reads a :class:`~gradleak.report.data.StudyData` and nothing else, and accepts any shape of
results (no baseline, one setting, missing metrics, unfinished units): what the results do not support is said,
never guessed.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gradleak.report.data import StudyData, finite, short
from gradleak.report.rules import (
    Utility,
    accuracy_cost,
    display_label,
    fmt_num,
    image_leaks,
    is_baseline,
    join_words,
    ordered_settings,
    plural,
    row_leaks,
    rule_statement,
    threat_model,
    utility,
)

__all__ = [
    "GroupVerdict",
    "Outcome",
    "Recommendation",
    "Utility",
    "accuracy_cost",
    "budget_text",
    "display_label",
    "group_verdicts",
    "image_leaks",
    "is_baseline",
    "ordered_settings",
    "recommendation",
    "row_leaks",
    "rule_statement",
    "threat_model",
    "utility",
]


@dataclass
class Outcome:
    """What the attacks found in one setting for one client group."""

    leaks: int = 0
    images: int = 0
    graded: int = 0
    ungraded: int = 0

    @property
    def leaked(self) -> bool:
        return self.leaks > 0


# ----------------------------------------------------------------------------------------------- budget


def budget_text(rows: Iterable[dict[str, Any]], data: StudyData) -> str:
    """The attack budget behind the rows: each attack's label with its iterations and restarts."""
    by_attack: dict[str, set[tuple[int, int]]] = defaultdict(set)
    for row in rows:
        label = data.attack_labels.get(_int(row.get("attack_index"), -1), str(row.get("attack") or "attack"))
        iterations = _int(row.get("iterations"), 0)
        restarts = _int(row.get("restarts"), 1)
        by_attack[label].add((iterations, restarts))
    parts = []
    for label, runs in sorted(by_attack.items()):
        its = sorted({i for i, _ in runs})
        rs = sorted({r for _, r in runs})
        if its == [0]:
            parts.append(f"{label}, analytic (no optimisation)")
            continue
        it_text = "/".join(str(i) for i in its if i) or "0"
        parts.append(f"{label}, {it_text} iterations, {'/'.join(str(r) for r in rs)} "
                     f"restart{'s' if rs != [1] else ''}")
    return "; ".join(parts) or "no attack"


def _int(value: Any, default: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return default
    return int(value)


# ------------------------------------------------------------------------------------------ client groups


@dataclass
class GroupVerdict:
    """The verdict for clients with the same number of images, local steps and batch size."""

    num_images: int | None
    local_steps: int | None
    batch_size: int | None
    clients: list[int]
    rows: list[dict[str, Any]]
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    sentence: str = ""
    evidence: dict[str, Any] | None = None

    @property
    def leaks_anywhere(self) -> bool:
        return any(o.leaked for o in self.outcomes.values())

    def who(self) -> str:
        clients = sorted(set(self.clients))
        names = f"client {clients[0]}" if len(clients) == 1 else f"clients {join_words([str(c) for c in clients])}"
        facts = []
        if self.num_images is not None:
            facts.append(plural(self.num_images, "image") + (" each" if len(clients) > 1 else ""))
        if self.local_steps is not None:
            step = plural(self.local_steps, "local step")
            facts.append(step + (f" of batch {self.batch_size}" if self.batch_size is not None else ""))
        return names + (f" ({', '.join(facts)})" if facts else "")


def _group_key(row: dict[str, Any]) -> tuple[int | None, int | None, int | None]:
    def opt(key: str) -> int | None:
        v = row.get(key)
        return None if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) else int(v)

    return opt("num_images"), opt("local_steps"), opt("batch_size")


def _defended_arms(ordered: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The settings that defend, by arm, in order."""
    arms: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for s in ordered:
        if not is_baseline(s):
            arms[str(s.get("arm") or s.get("label"))].append(s)
    return arms


def _arm_param(data: StudyData, settings: Sequence[dict[str, Any]]) -> str | None:
    """The numeric grid parameter that varies across ``settings`` of one arm (``sigma0``), if there is one."""
    values: dict[str, set[float]] = defaultdict(set)
    for s in settings:
        for k, v in (s.get("defense_values") or {}).items():
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
                values[k].add(float(v))
    varying = [k for k, v in values.items() if len(v) >= 2]
    if len(varying) == 1:
        return varying[0]
    single = [k for k, v in values.items() if v]
    return single[0] if len(single) == 1 and len(settings) == 1 else None


def _param(setting: dict[str, Any], name: str) -> float | None:
    v = (setting.get("defense_values") or {}).get(name)
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) else None


def _arm_phrase(data: StudyData, arm: str, settings: list[dict[str, Any]], outcomes: dict[str, Outcome]) -> str:
    tested = [s for s in settings if s["key"] in outcomes and outcomes[s["key"]].graded]
    if not tested:
        return f"with {arm}: not graded"
    param = _arm_param(data, tested)
    if param is None or any(_param(s, param) is None for s in tested):
        leaking = [s["label"] for s in tested if outcomes[s["key"]].leaked]
        safe = [s["label"] for s in tested if not outcomes[s["key"]].leaked]
        if not safe:
            return f"leaks under {join_words(leaking)}"
        if not leaking:
            return f"no leak found under {join_words(safe)}"
        return f"leaks under {join_words(leaking)}; no leak found under {join_words(safe)}"
    name = short(f"defense.{param}")
    by_value: dict[float, bool] = {}
    for s in tested:
        x = _param(s, param)
        if x is not None:
            by_value[x] = by_value.get(x, False) or outcomes[s["key"]].leaked
    values = sorted(by_value)
    leaking = [x for x in values if by_value[x]]
    safe = [x for x in values if not by_value[x]]
    listed = ", ".join(fmt_num(x) for x in values)
    if not safe:
        return f"with {arm}: leaks at every tested {name} ({listed})"
    if not leaking:
        return f"with {arm}: no leak found at any tested {name} ({listed})"
    if max(leaking) < min(safe):
        return (f"with {arm}: leaks at {name} ≤ {fmt_num(max(leaking))}, no leak found at {name} ≥ "
                f"{fmt_num(min(safe))}")
    return (f"with {arm}: leaks at {name} = {', '.join(fmt_num(x) for x in leaking)}; no leak found at {name} = "
            f"{', '.join(fmt_num(x) for x in safe)}")


def group_verdicts(data: StudyData) -> list[GroupVerdict]:
    """One verdict per client group (same number of images, local steps and batch size), most exposed first:
    which settings leak under the one rule, which do not, and the attack budget behind every "no leak"."""
    tau = data.tau
    groups: dict[tuple[int | None, int | None, int | None], GroupVerdict] = {}
    known = {s["key"] for s in data.settings}
    for row in data.attacks:
        if row.get("setting") not in known:
            continue
        key = _group_key(row)
        group = groups.setdefault(key, GroupVerdict(*key, clients=[], rows=[]))
        group.rows.append(row)
        client = row.get("client")
        if isinstance(client, int | float) and not isinstance(client, bool):
            group.clients.append(int(client))
        outcome = group.outcomes.setdefault(row["setting"], Outcome())
        found = row_leaks(row, tau)
        if found is None:
            outcome.ungraded += 1
        else:
            outcome.graded += 1
            outcome.leaks += found[0]
            outcome.images += found[1]
    ordered = ordered_settings(data)
    baselines = [s for s in ordered if is_baseline(s)]
    arms = _defended_arms(ordered)
    verdicts = []
    for group in groups.values():
        budget = budget_text(group.rows, data)
        who = group.who()
        graded = [o for o in group.outcomes.values() if o.graded]
        if not graded:
            group.sentence = f"{who}: no attack on these clients has been graded yet."
        elif not group.leaks_anywhere:
            where = "in any tested setting, the undefended baseline included" if any(
                b["key"] in group.outcomes for b in baselines) else "in any tested setting"
            group.sentence = (f"{who}: no leak found {where} ({budget}). This is absence of evidence within that "
                              "budget, not proof of safety.")
        else:
            parts = []
            base = [group.outcomes[b["key"]] for b in baselines if b["key"] in group.outcomes
                    and group.outcomes[b["key"]].graded]
            if base:
                k, n = sum(o.leaks for o in base), sum(o.images for o in base)
                parts.append(f"without defense {k} of {n} attacked image{'s' if n != 1 else ''} "
                             f"leak{'s' if k == 1 else ''}" if k else "without defense no leak found")
            for arm, settings in arms.items():
                if any(s["key"] in group.outcomes for s in settings):
                    parts.append(_arm_phrase(data, arm, settings, group.outcomes))
            group.sentence = f"{who}: {'; '.join(parts)} ({budget})."
        group.sentence = group.sentence[0].upper() + group.sentence[1:]
        ungraded = sum(o.ungraded for o in group.outcomes.values())
        if ungraded:
            group.sentence += f" {plural(ungraded, 'attack')} on these clients returned no grades."
        group.evidence = _evidence(group, baselines, ordered, tau)
        verdicts.append(group)
    verdicts.sort(key=lambda g: (not g.leaks_anywhere, g.num_images if g.num_images is not None else math.inf,
                                 g.local_steps if g.local_steps is not None else math.inf))
    return verdicts


def _evidence(group: GroupVerdict, baselines: list[dict[str, Any]], ordered: list[dict[str, Any]],
              tau: float) -> dict[str, Any] | None:
    """The attack unit to show for the group: its most leaking (then highest-SSIM) unit in the weakest setting
    it was attacked in (the baseline when there is one)."""
    rank = {s["key"]: i for i, s in enumerate(ordered)}
    rows = [r for r in group.rows if r.get("setting") in rank]
    if not rows:
        return None
    weakest = min(rank[r["setting"]] for r in rows)
    candidates = [r for r in rows if rank[r["setting"]] == weakest]

    def score(r: dict[str, Any]) -> tuple[int, float]:
        found = row_leaks(r, tau)
        ssim = finite([r.get("ssim_mean")])
        return (found[0] if found else -1, ssim[0] if ssim else -math.inf)

    return max(candidates, key=score)


# ----------------------------------------------------------------------------------------- recommendation


@dataclass(frozen=True)
class Recommendation:
    """The weakest tested setting that stops every attack tried (``setting`` is ``None`` when there is none)."""

    setting: dict[str, Any] | None
    sentence: str


def _stops(setting: dict[str, Any], verdicts: Sequence[GroupVerdict], missing: set[str]) -> bool:
    """No graded leak, nothing left ungraded or unfinished, and every group that leaks somewhere attacked here."""
    if setting["key"] in missing:
        return False
    for g in verdicts:
        o = g.outcomes.get(setting["key"])
        if o is None:
            if g.leaks_anywhere:
                return False
            continue
        if o.leaked or o.ungraded or not o.graded:
            return False
    return any(setting["key"] in g.outcomes for g in verdicts)


def recommendation(data: StudyData, verdicts: Sequence[GroupVerdict] | None = None) -> Recommendation:
    """The weakest tested setting that stops every attack tried, with its accuracy cost against the undefended
    baseline; or plainly that no tested setting does.

    Within an arm whose settings vary one numeric parameter (``sigma0``), a value is a candidate only if it and
    every stronger value of the arm stop the attacks; the weakest such value is the arm's candidate. Among arms,
    the candidate with the highest mean test accuracy is recommended.
    """
    verdicts = list(verdicts) if verdicts is not None else group_verdicts(data)
    missing = set(data.missing_settings)
    ordered = ordered_settings(data)
    baselines = [s for s in ordered if is_baseline(s)]
    baseline = baselines[0] if baselines else None
    graded = [g for g in verdicts if any(o.graded for o in g.outcomes.values())]
    if not graded:
        return Recommendation(None, "No attack has been graded yet, so no setting can be recommended.")
    budget = budget_text([r for g in verdicts for r in g.rows], data)
    if not any(g.leaks_anywhere for g in verdicts):
        where = "even without defense" if baseline is not None else "in any tested setting"
        return Recommendation(baseline, f"No attack tried found a leak {where} ({budget}); within these budgets "
                              "no defense is needed, though a stronger attacker might still succeed.")
    arms = _defended_arms(ordered)
    candidates = []
    for settings in arms.values():
        param = _arm_param(data, settings)
        stopping = [s for s in settings if _stops(s, verdicts, missing)]
        if param is None or any(_param(s, param) is None for s in settings):
            candidates += stopping
            continue
        kept = [s for s in stopping if all(_stops(t, verdicts, missing) for t in settings
                                           if (_param(t, param) or 0) >= (_param(s, param) or 0))]
        if kept:
            candidates.append(min(kept, key=lambda s: _param(s, param) or 0))
    if not candidates:
        strongest = [g for g in verdicts if g.leaks_anywhere]
        still = []
        for g in strongest:
            leaking = [s["label"] for s in ordered if not is_baseline(s) and g.outcomes.get(s["key"], Outcome()).leaked]
            if leaking:
                still.append(f"{g.who()} still leaks under {join_words(leaking[-1:])}")
        detail = f": {'; '.join(still)}" if still else ""
        return Recommendation(None, f"No tested setting stops every attack tried ({budget}){detail}.")

    def acc(s: dict[str, Any]) -> float:
        u = utility(s)
        return u.mean if u.mean is not None else -math.inf

    best = max(candidates, key=acc)
    u = utility(best)
    cost = accuracy_cost(best, baseline)
    base_text = f" against {utility(baseline).text()} without defense" if baseline is not None else ""
    return Recommendation(best, f"Deploy {best['label']}: the weakest tested setting that stops every attack tried "
                          f"({budget}). Its test accuracy is {u.text()}{base_text} ({cost}).")


# ------------------------------------------------------------------------------------------ threat model


