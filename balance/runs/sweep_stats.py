"""Reading a sweep back for its statistics: every metric at a fixed training time t (or step), the step-size slope
fitted per seed and summarised across seeds, and the member that stands for a cell.

Why a fixed time: a study of the step size compares runs at the same t = sum of the steps (gradient flow's clock);
at a fixed number of steps each step size is read at a different t, and the drift's scaling mixes the step size
with the time travelled (issue 14). ``summary(store, sweep, at_time=t)`` reads each member's last logged row with
t_k <= t (NaN for a member that never got there). Settings that do not apply to a member's model
(``balance.config.applicable``: momentum for GD, rank for an MLP) are NaN for it, and a column that applies to no
member is left out. Torch-free.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from balance.config import applicable
from balance.engine.laws import column, of_metric, prediction_of
from balance.runs import stats

DRIFT = "gap_drift"
PREDICTED = prediction_of(DRIFT) or ""
ALWAYS = ("optim.lr", "model.init_scale", "seed")  # the heat maps' axes and the seed: every member has them
AXES = (*ALWAYS, "optim.name", "model.width", "model.depth", "optim.momentum")
TIME_TOLERANCE = 1e-9  # relative: t accumulates the step sizes in floating point


def _flat(nested: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in nested.items():
        if isinstance(value, Mapping):
            out |= {f"{key}.{k}": tuple(v) if isinstance(v, list) else v for k, v in value.items()}
        else:
            out[key] = value
    return out


def settings_table(records: list[Any]) -> pd.DataFrame:
    """One row per record: the ``AXES`` and every varied setting, NaN where a setting does not apply to that
    member's model and optimiser; columns that apply to no member are dropped."""
    flats = [_flat(r.config.to_dict()) for r in records]
    varied = [k for k in flats[0] if len({repr(f[k]) for f in flats}) > 1] if flats else []
    keys = list(dict.fromkeys([*AXES, *varied]))
    rows = []
    for flat in flats:
        own = set(applicable(flat)) | set(ALWAYS)
        rows.append({k: flat[k] if k in own else math.nan for k in keys})
    table = pd.DataFrame(rows, columns=keys)
    return table[[k for k in keys if k in ALWAYS or table[k].notna().any()]]


def read_at(metrics: pd.DataFrame, at_time: float | None = None, at_step: int | None = None) -> dict[str, float]:
    """The metrics row at training time ``at_time`` (the last with t <= at_time) or step ``at_step`` (the last logged
    at or before it), else the last row; {} when the run never reached it (or logged nothing)."""
    if metrics.empty:
        return {}
    if at_time is not None:
        t = metrics["t"].to_numpy(float)
        if t[-1] < at_time * (1 - TIME_TOLERANCE):
            return {}
        rows = metrics[t <= at_time * (1 + TIME_TOLERANCE)]
    elif at_step is not None:
        if metrics["step"].iloc[-1] < at_step:
            return {}
        rows = metrics[metrics["step"] <= at_step]
    else:
        rows = metrics
    return {k: float(v) for k, v in rows.iloc[-1].items()} if len(rows) else {}


def final_pair(row: Mapping[str, Any]) -> dict[str, float]:
    """The gap drift, its prediction and the ratio of the pair with the largest finite |drift| in ``row``."""
    pairs = of_metric(row, DRIFT)

    def size(h: int) -> float:
        v = row[column(DRIFT, h)]
        return abs(v) if math.isfinite(v) else -1.0

    h = max(pairs, key=size) if pairs else None
    return {m: row.get(column(m, h), math.nan) if h is not None else math.nan for m in (DRIFT, PREDICTED, "ratio")}


def summary(store: Any, sweep: str, at_time: float | None = None, at_step: int | None = None) -> pd.DataFrame:
    """One row per member: run, name, state, message, its settings (``settings_table``), then every metric of the
    row read at ``at_time`` / ``at_step`` (the last row when neither): loss, gap_drift / pred_gap_drift / ratio of
    the pair with the largest |drift|, diverged (0 / 1), steps, t, and every registry column of that row."""
    records = store.sweep_runs(sweep)
    settings = settings_table(records)
    rows = []
    for r, (_, s) in zip(records, settings.iterrows()):
        read = read_at(store.metrics(r.id), at_time, at_step) if (at_time, at_step) != (None, None) else None
        row = store.last_row(r.id) if read is None else read
        rows.append({
            "run": r.id, "name": r.name, "state": r.state, "message": r.message, **s.to_dict(),
            "loss": row.get("loss", math.nan), **final_pair(row), "diverged": float(r.state == "diverged"),
            "steps": row.get("step", r.step) if read is not None else r.step, "t": row.get("t", math.nan),
            **{f"at.{k}": v for k, v in row.items() if k not in ("step", "t", "loss")},
        })  # fmt: skip
    return pd.DataFrame(rows)


def seed_slopes(df: pd.DataFrame, by: str = "model.init_scale", x: str = "optim.lr", y: str = DRIFT) -> pd.DataFrame:
    """log|y| against log x fitted per seed within each value of ``by`` (finished members with a finite, non-zero
    y), then the seeds' mean slope with its 95% t interval across seeds (``balance.runs.stats.seed_slopes``).

    One row per group: by, slope, low, high, seeds (used), points (per seed, at least), note ('' or why no fit).
    A seed needs 2 step sizes and the group 2 seeds; a seed whose y changes sign is left out (its |y| crosses 0)."""
    ok = df[(df["state"] == "finished") & np.isfinite(df[y].astype(float)) & (df[y] != 0)]
    rows = []
    for value, group in ok.groupby(by, sort=True):
        per_seed = [g.sort_values(x) for _, g in group.groupby("seed") if g[x].nunique() >= 2]
        row = {by: value, "slope": math.nan, "low": math.nan, "high": math.nan, "seeds": 0, "points": 0, "note": ""}
        slopes = [stats.slope(g[x], g[y]) for g in per_seed if (g[y] > 0).all() or (g[y] < 0).all()]
        iv = stats.mean_ci(slopes) if len(slopes) >= 2 else None
        if iv is None:
            row["note"] = "needs at least 2 seeds with 2 step sizes each (and a drift of one sign)"
        else:
            row |= {"slope": iv.value, "low": iv.low, "high": iv.high, "seeds": iv.n,
                    "points": min(len(g) for g in per_seed)}  # fmt: skip
        rows.append(row)
    return pd.DataFrame(rows, columns=[by, "slope", "low", "high", "seeds", "points", "note"])


def filter_axes(
    df: pd.DataFrame, settings: list[str], axes: tuple[str, ...] = ("optim.lr", "model.init_scale")
) -> list[str]:
    """The varied ``settings`` a reader picks one value of: not the heat-map ``axes``, and not a setting the axes
    determine (a fixed-time sweep's steps = t / eta go with the step size: picking one would keep one column)."""
    out = []
    for s in settings:
        if s in axes or df[s].astype(str).nunique() <= 1:
            continue
        if df.groupby(list(axes), dropna=False)[s].nunique(dropna=False).max() <= 1:
            continue
        out.append(s)
    return out


def closest_to_median(values: pd.Series) -> Any:
    """The index of the value closest to the median of ``values`` (finite ones; None when there are none): the
    member a heat-map cell opens, so the run shown is the one the cell's number describes."""
    v = values.astype(float)
    v = v[np.isfinite(v)]
    if v.empty:
        return None
    return (v - v.median()).abs().idxmin()
