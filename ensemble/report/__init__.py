"""What the report stage reads and computes: OOF inputs, reliability bins, slices, DVC plot files.

`ensemble/report/html.py` draws the figures and writes `report.html`; this module only loads and
checks the inputs and turns them into tables, so both the HTML and `dvc plots show` use one set
of numbers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ensemble import TARGETS
from ensemble.core.data import DataError, as_turns, load_battles
from ensemble.core.io import write_csv
from ensemble.core.metrics import accuracy, clip_normalize, log_loss, prior_proba

CLASS_NAMES = ("model_a", "model_b", "tie")
BLEND = "blend"
#: Fallback characters per token for the truncation proxy when a model's input.json gives no cut share.
PROXY_CHARS_PER_TOKEN = 4.0
LENGTH_BUCKETS = ((0.0, 0.5, "< 0.5"), (0.5, 0.8, "0.5 - 0.8"), (0.8, 1.25, "0.8 - 1.25"),
                  (1.25, 2.0, "1.25 - 2"), (2.0, np.inf, ">= 2"))
TURN_BUCKETS = ((1, 1, "1"), (2, 2, "2"), (3, 4, "3 - 4"), (5, 10**9, ">= 5"))


@dataclass
class ReportInputs:
    """Everything the report shows, aligned row for row with the labelled training battles."""

    ids: np.ndarray
    labels: np.ndarray
    probas: dict[str, np.ndarray]  # model name (and "blend": cross-fitted) -> (n, 3), clipped and renormalized
    texts: pd.DataFrame  # prompt, response_a, response_b as turn lists
    blend: dict  # blend.json (the fitted blender: method, models, its numbers)
    metrics: dict  # metrics.json, or {} when absent
    inputs: dict[str, dict] = field(default_factory=dict)  # models/<m>/input.json
    folds: int = 0

    @property
    def models(self) -> list[str]:
        return [m for m in self.probas if m != BLEND]

    @property
    def method(self) -> str:
        return str(self.blend.get("method", "?"))

    @property
    def weights(self) -> dict[str, float]:
        """Each model's share of the blend when it is a weighted average (the blend stage's metrics), else {}."""
        return dict(self.metrics.get("blender", {}).get("weights") or {})


def _read_json(path: Path, required: bool) -> dict:
    if not path.is_file():
        if required:
            raise DataError(f"{path}: file not found; run the blend stage first (dvc repro blend)")
        return {}
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a JSON object, found {type(obj).__name__}")
    return obj


def _read_proba(path: Path, ids: pd.Index, what: str) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"{path}: no OOF file for {what}; run its stage first (dvc repro)")
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several unrelated types for a corrupt file
        raise DataError(f"{path}: unreadable parquet file ({type(exc).__name__}: {exc})") from None
    missing_cols = [c for c in ("id", *TARGETS) if c not in frame.columns]
    if missing_cols:
        raise DataError(f"{path}: missing column(s) {', '.join(missing_cols)}")
    frame = frame.assign(id=frame["id"].astype(str))
    if frame["id"].duplicated().any():
        dup = frame.loc[frame["id"].duplicated(), "id"].iloc[0]
        raise DataError(f"{path}: column id has duplicate values, e.g. {dup}")
    frame = frame.set_index("id")
    missing = ids.difference(frame.index)
    if len(missing):  # extra rows are ignored, as the blender does
        raise DataError(f"{path}: ids do not match the training file: no rows for {len(missing)} of its "
                        f"{len(ids)} ids (e.g. {', '.join(map(str, missing[:5]))}); rerun its stage")
    frame = frame.loc[ids]
    values = frame[list(TARGETS)].to_numpy(dtype=float)
    blank = np.isnan(values).all(axis=1)  # a row of a fold the model did not train (`<model>.folds`)
    if not np.isfinite(values[~blank]).all():
        bad = ids[~blank][~np.isfinite(values[~blank]).all(axis=1)]
        raise DataError(f"{path}: columns {', '.join(TARGETS)} hold NaN/inf in rows with id "
                        f"{', '.join(map(str, bad[:10]))}")
    return frame


def load_inputs(train: Path, oof_dir: Path, blend_oof: Path, blend_json: Path, metrics_json: Path,
                models_dir: Path) -> ReportInputs:
    """Read and cross-check every input; any mismatch is a DataError naming the file."""
    if not train.is_file():
        raise DataError(f"{train}: file not found; run the prepare stage first (dvc repro prepare)")
    try:
        battles = load_battles(train).set_index("id")
    except Exception as exc:  # pyarrow raises several unrelated types for a corrupt file
        raise DataError(f"{train}: unreadable prepared battles ({type(exc).__name__}: {exc})") from None
    if "label" not in battles:
        raise DataError(f"{train}: no label column; the report needs the labelled training battles")
    ids = battles.index
    blend = _read_json(blend_json, required=True)
    models = blend.get("models")
    if not isinstance(models, list) or not models or not isinstance(blend.get("method"), str):
        raise DataError(f"{blend_json}: needs a non-empty 'models' list and a 'method'; rerun the blend stage")
    frames, folds = {}, 0
    for name in models:
        frames[name] = _read_proba(oof_dir / f"{name}.parquet", ids, f"model {name!r}")
        if "fold" in frames[name]:
            folds = max(folds, int(frames[name]["fold"].nunique()))
    frame = _read_proba(blend_oof, ids, "the cross-fitted blend")
    if "label" in frame and not np.array_equal(frame["label"].to_numpy(dtype=int), battles["label"].to_numpy(int)):
        raise DataError(f"{blend_oof}: labels differ from {train}; the blend is stale, rerun it (dvc repro blend)")
    frames[BLEND] = frame
    # the rows every model and the blend cover (all, unless a model trained some folds only)
    covered = np.logical_and.reduce([np.isfinite(f[list(TARGETS)].to_numpy(dtype=float)).all(axis=1)
                                     for f in frames.values()])
    if not covered.any():
        raise DataError(f"{blend_oof}: no training row is covered by every model and the blend; rerun the blend")
    battles, ids = battles[covered], ids[covered]
    probas = {name: clip_normalize(f[list(TARGETS)].to_numpy(dtype=float)[covered]) for name, f in frames.items()}
    inputs = {m: _read_json(models_dir / m / "input.json", required=False) for m in models}
    return ReportInputs(ids=ids.to_numpy(), labels=battles["label"].to_numpy(dtype=int), probas=probas,
                        texts=battles[["prompt", "response_a", "response_b"]], blend=blend,
                        metrics=_read_json(metrics_json, required=False),
                        inputs={m: v for m, v in inputs.items() if v}, folds=folds)


# -- scores ---------------------------------------------------------------------------------------


def row_losses(labels: np.ndarray, proba: np.ndarray) -> np.ndarray:
    """Per-battle log loss; its mean is metrics.log_loss."""
    return -np.log(clip_normalize(proba)[np.arange(len(labels)), labels])


def reliability(proba: np.ndarray, hit: np.ndarray, bins: int = 10) -> pd.DataFrame:
    """Mean predicted probability vs observed frequency per equal-width bin (empty bins skipped)."""
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(proba, edges[1:-1]), 0, bins - 1)
    rows = []
    for b in range(bins):
        mask = which == b
        if mask.any():
            rows.append({"predicted": round(float(proba[mask].mean()), 6),
                         "observed": round(float(hit[mask].mean()), 6), "count": int(mask.sum())})
    return pd.DataFrame(rows, columns=["predicted", "observed", "count"])


def confusion(labels: np.ndarray, proba: np.ndarray) -> np.ndarray:
    """3x3 counts, rows = actual class, columns = predicted (argmax) class."""
    out = np.zeros((3, 3), dtype=int)
    np.add.at(out, (labels, proba.argmax(axis=1)), 1)
    return out


def intervals(entry: dict) -> dict[str, tuple[float, float]]:
    """Confidence intervals found in a metrics.json entry, whatever their spelling:
    {"ci": {"log_loss": [lo, hi]}}, {"ci": {"log_loss": {"low": lo, "high": hi}}} or {"log_loss_ci": [lo, hi]}."""
    def pair(v):
        if isinstance(v, dict):
            lo = next((v[k] for k in ("low", "lo", "lower", "ci_low") if k in v), None)
            hi = next((v[k] for k in ("high", "hi", "upper", "ci_high") if k in v), None)
            v = [lo, hi]
        if isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v):
            return float(v[0]), float(v[1])
        return None

    out = {}
    if not isinstance(entry, dict):
        return out
    for key, value in entry.items():
        if "ci" not in key.split("_"):
            continue
        if isinstance(value, dict) and pair(value) is None:
            out.update({k: p for k, v in value.items() if (p := pair(v))})
        elif (p := pair(value)) and key.endswith("_ci"):
            out[key[:-3]] = p
    return out


def summary_rows(data: ReportInputs) -> list[dict]:
    """One row per model and for the cross-fitted blend (scores recomputed from the OOF files), then the
    blend stage's other figures: every blender cross-fitted, the fitted blend in-sample (optimistic:
    fitted on the rows it is scored on, so named so) and the hand-set blend."""
    mets, weights, method = data.metrics, data.weights, data.method
    rows = []
    for name, proba in data.probas.items():
        entry = mets.get("blend", {}) if name == BLEND else mets.get("models", {}).get(name, {})
        label = f"blend {method}, cross-fitted" if name == BLEND else name
        if entry.get("prior_folds"):  # folds where the model fell back to the class prior (ensemble.pipeline.oof)
            label += f" (the class prior on {entry['prior_folds']} of {entry['folds']} folds)"
        rows.append({"name": name, "label": label, "weight": weights.get(name),
                     "log_loss": log_loss(data.labels, proba),
                     "accuracy": accuracy(data.labels, proba), "ci": intervals(entry)})
    blend = mets.get("blend", {})
    extra = [(f"blend {m}, cross-fitted", v) for m, v in blend.get("by_method", {}).items() if m != method]
    if isinstance(blend.get("insample"), dict):
        extra.append((f"blend {method}, in-sample (scored on the rows it was fitted on: optimistic)",
                      blend["insample"]))
    if isinstance(mets.get("fixed_blend"), dict) and "log_loss" in mets["fixed_blend"]:
        extra.append(("blend, fixed hand-set weights", mets["fixed_blend"]))
    for label, entry in extra:
        acc = entry.get("accuracy")
        rows.append({"name": label, "label": label, "weight": None, "log_loss": float(entry["log_loss"]),
                     "accuracy": float(acc) if isinstance(acc, (int, float)) else None, "ci": {}})
    return rows


# -- slices ---------------------------------------------------------------------------------------


def _chars(cells) -> np.ndarray:
    return np.array([sum(len(t) for t in as_turns(c)) for c in cells], dtype=float)


def truncation_flags(data: ReportInputs) -> dict[str, tuple[np.ndarray, str]]:
    """Per transformer model (one with an input.json): a per-battle 'truncated' flag and how it was made.

    No per-battle flags are saved, so this is a character-length proxy: the battle's characters
    (prompt + both responses for a model that reads one sequence; prompt + the longer response for
    the dual tower, one tower per side) against a threshold set so that the proxy flags the same share
    of battles as input.json reports cut (`battles_cut_any`)."""
    prompt, a, b = (_chars(data.texts[c]) for c in ("prompt", "response_a", "response_b"))
    out = {}
    for name, info in data.inputs.items():
        tower = any(k.startswith("tower_") for k in info)
        chars = prompt + (np.maximum(a, b) if tower else a + b)
        what = "prompt + longer response" if tower else "prompt + both responses"
        share, max_len = info.get("battles_cut_any"), info.get("max_len")
        if isinstance(share, (int, float)) and 0 < share < 1:
            threshold = float(np.quantile(chars, 1 - share))
            flags = chars > threshold
            per_token = f", about {threshold / max_len:.1f} characters per token" if max_len else ""
            how = (f"flagged when {what} exceed {threshold:,.0f} characters, the threshold that flags the share "
                   f"of battles input.json reports cut ({share:.1%}{per_token}; the proxy flags {flags.mean():.1%})")
        elif isinstance(share, (int, float)) and share in (0, 1):
            flags = np.full(len(chars), bool(share))
            how = f"input.json reports {share:.0%} of battles cut"
        elif max_len:
            flags = chars > PROXY_CHARS_PER_TOKEN * max_len
            how = f"flagged when {what} exceed {PROXY_CHARS_PER_TOKEN:g} characters x max_len {max_len}"
        else:
            continue
        out[name] = (flags, how)
    return out


def slice_masks(data: ReportInputs) -> list[tuple[str, str, np.ndarray]]:
    """(group, slice, mask) for every non-empty slice."""
    out = []
    a, b = _chars(data.texts["response_a"]), _chars(data.texts["response_b"])
    ratio = (a + 1) / (b + 1)
    for lo, hi, label in LENGTH_BUCKETS:
        out.append(("length A / length B (characters)", label, (ratio >= lo) & (ratio < hi)))
    turns = np.array([len(as_turns(c)) for c in data.texts["prompt"]])
    for lo, hi, label in TURN_BUCKETS:
        out.append(("turns", label, (turns >= lo) & (turns <= hi)))
    tie = data.labels == 2
    out += [("true outcome", "tie", tie), ("true outcome", "A or B wins", ~tie)]
    for name, (flags, _) in truncation_flags(data).items():
        out += [(f"truncated for {name} (proxy)", "yes", flags), (f"truncated for {name} (proxy)", "no", ~flags)]
    return [(g, s, m) for g, s, m in out if m.any()]


def slice_table(data: ReportInputs) -> pd.DataFrame:
    """Log loss of every model and the blend per slice, with the slice's size, tie share and the
    class-prior log loss; `blend_pm` is the half-width of a normal 95% interval of the blend's mean."""
    losses = {name: row_losses(data.labels, p) for name, p in data.probas.items()}
    prior = row_losses(data.labels, prior_proba(data.labels, len(data.labels)))
    rows = []
    for group, label, mask in [("all", "all battles", np.ones(len(data.labels), bool))] + slice_masks(data):
        n = int(mask.sum())
        row = {"group": group, "slice": label, "n": n, "tie_share": float((data.labels[mask] == 2).mean()),
               "prior": float(prior[mask].mean())}
        row.update({name: float(v[mask].mean()) for name, v in losses.items()})
        row["blend_pm"] = float(1.96 * losses[BLEND][mask].std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


# -- DVC plots --------------------------------------------------------------------------------------


def write_plots(data: ReportInputs, out_dir: Path, bins: int = 10) -> list[Path]:
    """CSV files for the top-level `plots` of dvc.yaml: reliability.csv in long form (model, outcome,
    predicted, observed, count; the cross-fitted blend, every model and the diagonal, so the model names
    live in the data and not in dvc.yaml) and confusion.csv (the cross-fitted blend's actual/predicted)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for j, outcome in enumerate(CLASS_NAMES):
        rows.append(pd.DataFrame({"model": "perfect calibration", "outcome": outcome, "predicted": [0.0, 1.0],
                                  "observed": [0.0, 1.0], "count": [0, 0]}))
        for name, proba in data.probas.items():
            table = reliability(proba[:, j], data.labels == j, bins)
            rows.append(table.assign(model=f"blend ({data.method}, cross-fitted)" if name == BLEND else name,
                                     outcome=outcome))
    path = out_dir / "reliability.csv"
    write_csv(path, pd.concat(rows, ignore_index=True)[["model", "outcome", "predicted", "observed", "count"]])
    names = np.asarray(CLASS_NAMES)
    confusion_path = out_dir / "confusion.csv"
    write_csv(confusion_path, pd.DataFrame({"actual": names[data.labels],
                                            "predicted": names[data.probas[BLEND].argmax(axis=1)]}))
    return [path, confusion_path]
