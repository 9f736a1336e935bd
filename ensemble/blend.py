"""Blender: non-negative weights summing to 1 that minimize OOF log loss, then a temperature.

`python -m ensemble.blend` refits from the OOF files in seconds and retrains nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import minimize, minimize_scalar

from . import TARGETS
from .cli import fail_cleanly
from .config import from_dict, load_params
from .data import DataError, load_battles
from .io import write_json, write_parquet
from .metrics import EPS, log_loss, prior_proba, report
from .oof import INPUT_REPORT


@dataclass
class BlendConfig:
    models: list[str] = field(default_factory=lambda: ["lgbm"])
    temperature: bool = True  # fit a temperature on top of the weighted average
    fixed_weights: dict[str, float] = field(default_factory=dict)  # evaluated beside the fitted blend


@dataclass
class Blend:
    models: list[str]
    weights: np.ndarray
    temperature: float = 1.0

    def apply(self, probas: list[np.ndarray]) -> np.ndarray:
        return apply_blend(probas, self.weights, self.temperature)

    def to_json(self) -> dict:
        return {"models": self.models, "weights": {m: float(w) for m, w in zip(self.models, self.weights)},
                "temperature": float(self.temperature)}

    @classmethod
    def from_json(cls, obj: dict) -> "Blend":
        models = list(obj["models"])
        return cls(models, np.array([obj["weights"][m] for m in models], dtype=float), float(obj["temperature"]))


def apply_blend(probas: list[np.ndarray], weights: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Linear pool of the models' probabilities, then softmax(log p / T)."""
    p = np.tensordot(np.asarray(weights, dtype=float), np.stack(probas), axes=1)
    p = np.clip(p, EPS, None)
    if temperature != 1.0:
        logits = np.log(p) / temperature
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


def fit_weights(probas: list[np.ndarray], labels: np.ndarray) -> np.ndarray:
    """SLSQP on the simplex. Log loss of a linear pool only needs each model's probability of the
    true class, so every evaluation is an (m, n) product: seconds even at Kaggle scale."""
    m = len(probas)
    if m == 1:
        return np.ones(1)
    rows = np.arange(len(labels))
    true_p = np.stack([p[rows, labels] for p in probas])  # (m, n)

    def loss(w):
        return -np.mean(np.log(np.clip(w @ true_p, EPS, None)))

    def grad(w):
        return -(true_p / np.clip(w @ true_p, EPS, None)).mean(axis=1)

    best = None
    starts = [np.full(m, 1 / m)] + [np.eye(m)[i] * 0.8 + 0.2 / m for i in range(m)]
    for w0 in starts:
        res = minimize(loss, w0, jac=grad, method="SLSQP", bounds=[(0.0, 1.0)] * m,
                       constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1, "jac": lambda w: np.ones(m)}],
                       options={"maxiter": 500, "ftol": 1e-12})
        if best is None or res.fun < best.fun:
            best = res
    w = np.clip(best.x, 0, None)
    return w / w.sum()


def fit_temperature(proba: np.ndarray, labels: np.ndarray) -> float:
    res = minimize_scalar(lambda t: log_loss(labels, apply_blend([proba], np.ones(1), t)),
                          bounds=(0.2, 5.0), method="bounded", options={"xatol": 1e-4})
    t = float(res.x)
    return t if log_loss(labels, apply_blend([proba], np.ones(1), t)) < log_loss(labels, proba) else 1.0


def fit_blend(probas: list[np.ndarray], labels: np.ndarray, models: list[str], temperature: bool = True) -> Blend:
    weights = fit_weights(probas, labels)
    t = fit_temperature(apply_blend(probas, weights), labels) if temperature else 1.0
    return Blend(models, weights, t)


def read_oof(artifacts: Path, models: list[str], labels: pd.DataFrame) -> list[np.ndarray]:
    """Each model's OOF matrix aligned row for row with the labelled training ids."""
    out = []
    for name in models:
        path = artifacts / "oof" / f"{name}.parquet"
        if not path.exists():
            raise DataError(f"{path}: no OOF file for model {name!r}; run its stage first (dvc repro {name})")
        oof = pd.read_parquet(path).assign(id=lambda f: f["id"].astype(str)).set_index("id")
        missing = labels.index.difference(oof.index)
        if len(missing):
            raise DataError(f"{path}: no OOF rows for {len(missing)} training ids (e.g. "
                            f"{', '.join(map(str, missing[:5]))}); its folds are stale, rerun its stage")
        matrix = oof.loc[labels.index, list(TARGETS)].to_numpy(dtype=float)
        if not np.isfinite(matrix).all():
            bad = labels.index[~np.isfinite(matrix).all(axis=1)]
            raise DataError(f"{path}: columns {', '.join(TARGETS)} hold NaN/inf in rows with id "
                            f"{', '.join(map(str, bad[:10]))}")
        out.append(matrix)
    return out


def run(params: dict, artifacts: Path, models: list[str] | None = None) -> dict:
    cfg = from_dict(BlendConfig, params.get("blend", {}), "blend")
    models = models or cfg.models
    if not models:
        raise DataError("blend.models is empty: list at least one model")
    start = time.perf_counter()
    train = load_battles(artifacts / "prepared" / "train.parquet").set_index("id")
    labels = train["label"].to_numpy()
    probas = read_oof(artifacts, models, train)
    blend = fit_blend(probas, labels, models, cfg.temperature)
    blended = blend.apply(probas)
    fit_seconds = time.perf_counter() - start

    metrics = {"rows": int(len(labels)), "prior_log_loss": round(log_loss(labels, prior_proba(labels, len(labels))), 6),
               "models": {m: report(labels, p) for m, p in zip(models, probas)},
               "blend": report(labels, blended), "weights": blend.to_json()["weights"],
               "temperature": round(blend.temperature, 4)}
    inputs = {m: json.loads((artifacts / "models" / m / INPUT_REPORT).read_text(encoding="utf-8"))
              for m in models if (artifacts / "models" / m / INPUT_REPORT).is_file()}
    if inputs:  # share of each text kept after truncation, per transformer model
        metrics["input"] = inputs
    fixed = {m: w for m, w in cfg.fixed_weights.items()}
    if fixed and set(fixed) <= set(models):
        w = np.array([fixed.get(m, 0.0) for m in models], dtype=float)
        metrics["fixed_blend"] = {"weights": fixed, **report(labels, apply_blend(probas, w / w.sum()))}
    elif fixed:
        metrics["fixed_blend"] = {"weights": fixed, "skipped": f"needs OOF of {sorted(set(fixed) - set(models))}"}

    write_json(artifacts / "blend.json", {**blend.to_json(), "oof_log_loss": metrics["blend"]["log_loss"]})
    write_json(artifacts / "metrics.json", metrics)
    oof_frame = pd.DataFrame(blended, columns=list(TARGETS)).assign(id=train.index.to_numpy(), label=labels)
    write_parquet(artifacts / "blend_oof.parquet", oof_frame[["id", "label", *TARGETS]])
    print(format_table(metrics))
    print(f"blend fitted in {fit_seconds:.2f} s on {len(labels)} rows x {len(models)} model(s)")
    return metrics


def format_table(metrics: dict) -> str:
    lines = [f"{'model':<14}{'weight':>8}{'log_loss':>10}{'accuracy':>10}",
             f"{'class prior':<14}{'':>8}{metrics['prior_log_loss']:>10.4f}{'':>10}"]
    for m, r in metrics["models"].items():
        lines.append(f"{m:<14}{metrics['weights'][m]:>8.3f}{r['log_loss']:>10.4f}{r['accuracy']:>10.4f}")
    b = metrics["blend"]
    lines.append(f"{'blend (fit)':<14}{'':>8}{b['log_loss']:>10.4f}{b['accuracy']:>10.4f}   T={metrics['temperature']}")
    fb = metrics.get("fixed_blend")
    if fb and "log_loss" in fb:
        w = "/".join(f"{k}={v}" for k, v in fb["weights"].items())
        lines.append(f"{'blend (fixed)':<14}{'':>8}{fb['log_loss']:>10.4f}{fb['accuracy']:>10.4f}   {w}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ensemble.blend", description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--artifacts", default="artifacts")
    ap.add_argument("--models", nargs="+", help="override blend.models")
    args = ap.parse_args(argv)
    run(load_params(args.params), Path(args.artifacts), args.models)
    return 0


if __name__ == "__main__":
    sys.exit(fail_cleanly(main))
