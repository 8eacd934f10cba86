"""Human-readable churn reasons from attributions and the customer's own values.

Every tabular feature and every group of event-sequence attributions belongs
to a *topic* (recency, purchases, support, ...). A customer's topics are
ranked by the sum of their attributions (logit units; positive raises the
churn risk), and each of the strongest topics is told in words by its
strongest member, with the customer's own value beside the typical one (the
baseline, e.g. the scored population's median): "no purchase for 94 days
(typical: 21)", "purchases down 40 % against the previous 90 days (3 vs 5)",
"4 support contacts in the last 90 days (1 in the 90 days before)".

Reasons carry customer values: they are shown at the branch only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedcrm.data.dataset import CHANNELS, EVENT_TYPES
from fedcrm.data.schema import ATTRIBUTE_PREFIX, raw_value

DEFAULT_REASONS = 3
"""Reasons per customer in ``fedcrm score``."""
MIN_ATTRIBUTION = 0.05
"""A topic is a reason only when it raises the logit by more than this."""

# Singular / plural words of each event type's count.
_EVENT_WORDS = {
    "purchase": ("purchase", "purchases"),
    "visit": ("visit", "visits"),
    "return": ("return", "returns"),
    "support": ("support contact", "support contacts"),
    "email_open": ("email opened", "emails opened"),
    "web_visit": ("web visit", "web visits"),
}
_TYPE_TOPIC = {
    "purchase": "purchases",
    "visit": "visits",
    "return": "returns",
    "support": "support",
    "email_open": "email",
    "web_visit": "web_visits",
}
SEQUENCE_GROUPS: tuple[str, ...] = ("timing", *(f"events:{t}" for t in EVENT_TYPES))
"""Columns of :func:`sequence_groups`: event timing, then each event type's events."""


def topic_of(name: str) -> str:
    """The topic of a tabular feature or a sequence group."""
    if name.startswith(ATTRIBUTE_PREFIX):
        return f"attribute:{name[len(ATTRIBUTE_PREFIX) :]}"
    if name.startswith("events:"):
        return _TYPE_TOPIC.get(name[len("events:") :], "activity")
    if name in ("log_recency_days", "timing"):
        return "recency"
    if name == "log_purchase_recency_days":
        return "purchase_recency"
    if name in ("log_total_spend", "log_mean_spend"):
        return "spend"
    if name == "log_tenure_days":
        return "tenure"
    if name == "log_n_returns":
        return "returns"
    if name == "log_n_support":
        return "support"
    if name.startswith("share_"):
        kind = name[len("share_") :]
        return _TYPE_TOPIC.get(kind, "channel" if kind in CHANNELS else "activity")
    if "purchase" in name:
        return "purchases"
    return "activity"


def _count(v: float, word: tuple[str, str]) -> str:
    n = round(v)
    return f"{n} {word[0] if n == 1 else word[1]}"


def _num(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 10 else f"{v:,.2f}".rstrip("0").rstrip(".")


def feature_text(name: str, value: float, typical: float, facts: dict[str, float]) -> str:
    """The sentence telling one tabular feature (values on their natural scale)."""
    t = " (typical: {})"
    if name == "log_recency_days":
        return f"no activity for {value:.0f} days" + t.format(f"{typical:.0f}")
    if name == "log_purchase_recency_days":
        return f"no purchase for {value:.0f} days" + t.format(f"{typical:.0f}")
    if name == "log_n_events":
        return _count(value, ("event", "events")) + " in total" + t.format(f"{typical:.0f}")
    if name == "log_n_purchases":
        return _count(value, _EVENT_WORDS["purchase"]) + " in total" + t.format(f"{typical:.0f}")
    if name == "log_total_spend":
        return f"total spend {_num(value)}" + t.format(_num(typical))
    if name == "log_mean_spend":
        return f"average purchase {_num(value)}" + t.format(_num(typical))
    if name == "log_tenure_days":
        return f"customer for {value:.0f} days" + t.format(f"{typical:.0f}")
    if name == "log_mean_gap_days":
        return f"{value:.0f} days between events on average" + t.format(f"{typical:.0f}")
    for kind, words in (("events", ("event", "events")), ("purchases", _EVENT_WORDS["purchase"])):
        if name.startswith(f"log_{kind}_") and name.endswith("d"):
            days = name[len(f"log_{kind}_") : -1]
            return _count(value, words) + f" in the last {days} days" + t.format(f"{typical:.0f}")
    if name == "log_n_returns":
        return _count(value, _EVENT_WORDS["return"]) + " in total" + t.format(f"{typical:.0f}")
    if name == "log_n_support":
        return _count(value, _EVENT_WORDS["support"]) + " in total" + t.format(f"{typical:.0f}")
    if name == "purchase_trend_90d":
        return _trend_text(facts.get("purchases_90d", 0.0), facts.get("purchases_180d", 0.0))
    if name.startswith("share_"):
        kind = name[len("share_") :]
        what = f"via {kind}" if kind in CHANNELS else _EVENT_WORDS.get(kind, (kind, kind))[1]
        lead = "of events" if kind in CHANNELS else "of events are"
        return f"{value:.0%} {lead} {what}" + t.format(f"{typical:.0%}")
    if name.startswith(ATTRIBUTE_PREFIX):
        return f"{name[len(ATTRIBUTE_PREFIX) :]} = {value:g}" + t.format(f"{typical:g}")
    return f"{name} = {value:g}" + t.format(f"{typical:g}")


def _trend_text(last_90: float, last_180: float) -> str:
    before = max(last_180 - last_90, 0.0)
    if before <= 0 and last_90 <= 0:
        return "no purchase in the last 180 days"
    if before <= 0:
        return _count(last_90, _EVENT_WORDS["purchase"]) + " in the last 90 days, none before"
    change = (last_90 - before) / before
    way = "down" if change < 0 else "up"
    return (
        f"purchases {way} {abs(change):.0%} against the previous 90 days "
        f"({last_90:.0f} vs {before:.0f})"
    )


def group_text(group: str, recency: tuple[float, float], counts: np.ndarray) -> str:
    """The sentence telling one sequence group.

    ``recency`` is the customer's days since the last event and the typical
    one; ``counts[t]`` holds event type ``t``'s events in the last 90 days, in
    the 90 before, in the kept sequence, and the days since the last one.
    """
    if group == "timing":
        return f"no activity for {recency[0]:.0f} days (typical: {recency[1]:.0f})"
    kind = group[len("events:") :]
    recent, before, total, last = counts[EVENT_TYPES.index(kind)]
    words = _EVENT_WORDS[kind]
    if recent > 0:
        return _count(recent, words) + f" in the last 90 days ({before:.0f} in the 90 days before)"
    if total > 0:
        return _count(total, words) + f", the last {last:.0f} days ago"
    return f"no {words[1]}"


def sequence_groups(seq_attr: np.ndarray, seq_cat: np.ndarray) -> np.ndarray:
    """Sum event attributions into :data:`SEQUENCE_GROUPS` ``(n, 1 + event types)``.

    ``seq_attr`` is ``(n, K, parts)`` from
    :func:`~fedcrm.models.attribution.sequence_attributions`: the timing group
    takes the gap and time-to-cutoff fields of every event, each event type's
    group takes the other fields of its events.
    """
    timing = seq_attr[..., 4:].sum(axis=(1, 2))
    what = seq_attr[..., :4].sum(axis=-1)
    etype = np.asarray(seq_cat[..., 0])
    cols = [timing] + [
        np.where(etype == i + 1, what, 0.0).sum(axis=1) for i in range(len(EVENT_TYPES))
    ]
    return np.stack(cols, axis=1)


def sequence_facts(seq_cat: np.ndarray, seq_num: np.ndarray) -> np.ndarray:
    """Per event type, over the kept events ``(n, types, 4)``: events in the last 90
    days, in the 90 before, in all, and days since the last one (nan: none)."""
    days = np.expm1(np.asarray(seq_num[..., 2], dtype=np.float64))
    etype = np.asarray(seq_cat[..., 0])
    recent = days <= 90
    before = (days > 90) & (days <= 180)
    out = np.zeros((etype.shape[0], len(EVENT_TYPES), 4))
    for i in range(len(EVENT_TYPES)):
        is_t = etype == i + 1
        out[:, i, 0] = (is_t & recent).sum(axis=1)
        out[:, i, 1] = (is_t & before).sum(axis=1)
        out[:, i, 2] = is_t.sum(axis=1)
        with np.errstate(invalid="ignore"):
            out[:, i, 3] = np.where(is_t, days, np.inf).min(axis=1)
    out[..., 3][np.isinf(out[..., 3])] = np.nan
    return out


def reasons(
    names: Sequence[str],
    attributions: np.ndarray,
    tabular: np.ndarray,
    typical: np.ndarray,
    *,
    groups: np.ndarray | None = None,
    facts: np.ndarray | None = None,
    top: int = DEFAULT_REASONS,
) -> list[list[tuple[str, float]]]:
    """The ``top`` reasons of each customer: ``(text, attribution of its topic)``, strongest first.

    Parameters
    ----------
    names
        Tabular feature names.
    attributions
        ``(n, len(names))`` tabular attributions (logit units).
    tabular, typical
        The customers' features ``(n, len(names))`` and the baseline ``(len(names),)``,
        as the model reads them (log / share scale).
    groups
        ``(n, len(SEQUENCE_GROUPS))`` sequence attributions (rows without them: 0).
    facts
        ``(n, event types, 4)`` from :func:`sequence_facts` (texts of sequence groups).
    """
    names = list(names)
    members = names + (list(SEQUENCE_GROUPS) if groups is not None else [])
    attr = attributions if groups is None else np.concatenate([attributions, groups], axis=1)
    topics = sorted({topic_of(m) for m in members})
    index = {t: i for i, t in enumerate(topics)}
    of_member = np.array([index[topic_of(m)] for m in members])
    n = attr.shape[0]
    totals = np.zeros((n, len(topics)))
    for j in range(len(members)):
        totals[:, of_member[j]] += attr[:, j]
    raw = {name: raw_value(name, tabular[:, j]) for j, name in enumerate(names)}
    typ = {name: float(raw_value(name, typical[j])) for j, name in enumerate(names)}
    col = {name: j for j, name in enumerate(names)}
    k = min(top, len(topics))
    order = np.argsort(-totals, axis=1, kind="stable")[:, :k]
    best = np.empty((n, len(topics)), dtype=np.int64)
    for t in range(len(topics)):
        in_topic = np.flatnonzero(of_member == t)
        best[:, t] = in_topic[np.argmax(attr[:, in_topic], axis=1)]
    out: list[list[tuple[str, float]]] = []
    for i in range(n):
        found = []
        for t in order[i]:
            if totals[i, t] <= MIN_ATTRIBUTION:
                break
            text = _text(members[best[i, t]], i, raw, typ, col, facts)
            found.append((text, float(totals[i, t])))
        out.append(found)
    return out


def _text(
    member: str,
    i: int,
    raw: dict[str, np.ndarray],
    typ: dict[str, float],
    col: dict[str, int],
    facts: np.ndarray | None,
) -> str:
    if member in col:
        extra = {
            "purchases_90d": float(raw["log_purchases_90d"][i])
            if "log_purchases_90d" in raw
            else 0.0,
            "purchases_180d": float(raw["log_purchases_180d"][i])
            if "log_purchases_180d" in raw
            else 0.0,
        }
        return feature_text(member, float(raw[member][i]), typ[member], extra)
    nan = float("nan")
    recency = (
        (float(raw["log_recency_days"][i]), typ["log_recency_days"])
        if "log_recency_days" in raw
        else (nan, nan)
    )
    counts = facts[i] if facts is not None else np.zeros((len(EVENT_TYPES), 4))
    return group_text(member, recency, counts)


__all__ = [
    "DEFAULT_REASONS",
    "SEQUENCE_GROUPS",
    "feature_text",
    "reasons",
    "sequence_facts",
    "sequence_groups",
    "topic_of",
]
