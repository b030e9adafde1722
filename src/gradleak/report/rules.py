"""The report's one leak rule applied to result rows, and the words for settings: which setting is the
undefended baseline, its label, its utility and accuracy cost, the rule and the threat model in one sentence."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gradleak.report.data import StudyData, finite

__all__ = ["Utility", "accuracy_cost", "display_label", "fmt_num", "image_leaks", "is_baseline", "join_words",
           "ordered_settings", "plural", "row_leaks", "rule_statement", "threat_model", "utility"]


def fmt_num(value: float) -> str:
    return f"{value:g}"


def join_words(items: Sequence[str]) -> str:
    items = list(items)
    if not items:
        return ""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


# ------------------------------------------------------------------------------------------------ settings


def is_baseline(setting: dict[str, Any]) -> bool:
    """An undefended setting: no defense, or only defenses that change nothing (``local-gaussian`` σ0 = 0)."""
    defenses = setting.get("defenses") or []
    if not defenses:
        return True
    from gradleak.defenses import DEFENSES

    for d in defenses:
        try:
            if not DEFENSES.create(d["name"], **dict(d.get("options") or {})).noop:
                return False
        except Exception:  # an unknown or invalid defense in a results folder: not a no-op as far as we know
            return False
    return True


def display_label(setting: dict[str, Any]) -> str:
    """The setting's label, marked "(undefended)" when it is a baseline whose label does not say so."""
    label = str(setting.get("label") or setting.get("key"))
    return label + " (undefended)" if is_baseline(setting) and "undefended" not in label.lower() else label


def ordered_settings(data: StudyData) -> list[dict[str, Any]]:
    """The settings, undefended baselines first, the others in plan order (arm by arm, grid values in order)."""
    return sorted(data.settings, key=lambda s: not is_baseline(s))


@dataclass(frozen=True)
class Utility:
    """Final test accuracy of a setting's global model: mean and sd over its training seeds, and the majority
    class's rate on the test set (the accuracy of always predicting the most frequent class)."""

    mean: float | None
    sd: float | None
    seeds: int
    majority: float | None

    def text(self) -> str:
        if self.mean is None:
            return "–"
        if self.seeds >= 2 and self.sd is not None:
            return f"{self.mean:.3f} ± {self.sd:.3f} ({self.seeds} seeds)"
        return f"{self.mean:.3f} (1 run)"


def utility(setting: dict[str, Any]) -> Utility:
    records = setting.get("replicate_records") or [setting.get("fl") or {}]
    values = finite(r.get("final_test_accuracy") for r in records)
    mean = sum(values) / len(values) if values else None
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if mean is not None and len(values) > 1 \
        else None
    majority = finite([(setting.get("fl") or {}).get("majority_rate")])
    return Utility(mean, sd, len(values), majority[0] if majority else None)


def accuracy_cost(setting: dict[str, Any], baseline: dict[str, Any] | None) -> str:
    """The accuracy difference against ``baseline`` and whether it exceeds run-to-run variation: a difference
    within twice its standard error (over the training seeds of both settings) is reported as within it."""
    a = utility(setting)
    if baseline is None:
        return "no undefended baseline to compare with"
    b = utility(baseline)
    if a.mean is None or b.mean is None:
        return "accuracy not measured"
    delta = a.mean - b.mean
    if a.seeds >= 2 and b.seeds >= 2 and a.sd is not None and b.sd is not None:
        se = math.sqrt(a.sd**2 / a.seeds + b.sd**2 / b.seeds)
        where = "within" if abs(delta) <= 2 * se else "beyond"
        return f"{delta:+.3f}, {where} run-to-run variation (±{2 * se:.3f} over {a.seeds} and {b.seeds} seeds)"
    return f"{delta:+.3f}; one training run per setting, so run-to-run variation is not measured"


# ---------------------------------------------------------------------------------------------- one row


def row_leaks(row: dict[str, Any], tau: float) -> tuple[int, int] | None:
    """``(leaked images, attacked images)`` of one attack unit under the one leak rule, or ``None`` when the
    unit holds no grades. Records written by :func:`gradleak.study.measure.measure` carry the verdict
    (``n_leaks``); older ones are judged from what they hold (per-image SSIM, RDLV, SSIM to the prior)."""
    per_image = row.get("ssim_per_image")
    n = row.get("num_images")
    if not isinstance(n, int | float) or isinstance(n, bool) or not n >= 0:
        n = len(per_image) if isinstance(per_image, list) else 0
    n = int(n)
    leaks = row.get("n_leaks")
    if isinstance(leaks, int | float) and not isinstance(leaks, bool) and math.isfinite(leaks):
        return int(leaks), n
    flags = row.get("leak_per_image")
    if isinstance(flags, list):
        return sum(1 for f in flags if f is True), n
    if not isinstance(per_image, list) or not per_image:
        return None
    return sum(image_leaks(row, tau)), n


def rule_statement(data: StudyData) -> str:
    """The leak rule of each attack, in plain words, once."""
    from gradleak.metrics import describe_rule

    rules: dict[str, list[str]] = defaultdict(list)
    for index, rows in sorted(data.by_attack().items()):
        label = data.attack_labels.get(index, str(rows[0].get("attack")))
        for rule in sorted({str(r.get("leak_rule")) for r in rows} & {"prior", "threshold", "verbatim"}):
            rules[rule].append(label)
    if not rules:
        rules["prior"] = []
    psnr = finite(r.get("verbatim_psnr") for r in data.attacks)
    parts = []
    for rule, labels in rules.items():
        text = describe_rule(rule, data.tau, psnr[0] if psnr else 60.0)
        parts.append(f"{join_words(labels)}: {text}" if labels and len(rules) > 1 else text[0].upper() + text[1:])
    return ". ".join(parts) + "."


def threat_model(data: StudyData) -> str:
    """Who attacks and what they know, in one sentence, from the study's attack configs."""
    from gradleak.attacks.base import ATTACKS

    parts = []
    for i, cfg in enumerate(data.config.get("attacks") or []):
        label = data.attack_labels.get(i, str(cfg.get("name")))
        try:
            malicious = bool(getattr(ATTACKS.get(str(cfg.get("name"))), "modifies_model", False))
        except Exception:
            malicious = False
        prior = cfg.get("prior") or {}
        knows = "the round's global model, each attacked client's update (with its BatchNorm statistics), the " \
                "training recipe and the number of images"
        if cfg.get("threat") == "informed":
            knows += " and the labels"
        if malicious:
            public = cfg.get("public") or {}
            who = (f"{label}: a malicious server that sends a modified model and holds {public.get('images', '?')} "
                   f"public {public.get('split', 'test')} images")
        else:
            who = f"{label}: an honest-but-curious server that sees {knows}"
        if prior.get("kind", "mean") == "mean" and not malicious:
            who += f", with a prior image (the mean of {prior.get('images', '?')} {prior.get('split', 'test')} images)"
        parts.append(who)
    if not parts:
        return "Threat model: no attack configured."
    return "Threat model — " + "; ".join(parts) + ". No attacker sees a client's images."


def image_leaks(row: dict[str, Any], tau: float) -> list[bool]:
    """Per attacked image of one unit: leaked under the one rule (``False`` where nothing was graded)."""
    flags = row.get("leak_per_image")
    if isinstance(flags, list):
        return [f is True for f in flags]
    def column(key: str) -> list[Any] | None:
        value = row.get(key)
        return value if isinstance(value, list) else None

    rdlv, to_prior = column("rdlv_per_image"), column("ssim_to_prior_per_image")
    out = []
    for i, s in enumerate(column("ssim_per_image") or []):
        ok = bool(finite([s])) and s > tau
        if ok and rdlv is not None:
            r = rdlv[i] if i < len(rdlv) else None
            ok = r is not None and bool(finite([r])) and r > 0
        if ok and to_prior is not None:
            t = to_prior[i] if i < len(to_prior) else None
            ok = t is not None and bool(finite([t])) and s > t
        out.append(ok)
    return out
