"""Blender: non-negative weights summing to 1 that minimize OOF log loss, then a temperature
(`method: weights`), or a level-2 logistic-regression stacker (`method: stack`, ensemble/stacking.py).

`python -m ensemble.blend` refits from the OOF files in seconds and retrains nothing. Its score is
cross-fitted (each fold blended by a fit on the other folds), with prompt-level bootstrap intervals;
the in-sample score, on the rows the blend was fitted on, is reported beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
from scipy.optimize import minimize, minimize_scalar

from ensemble import TARGETS
from ensemble.blend.bootstrap import paired_diff_ci
from ensemble.core.metrics import row_log_loss
from ensemble.core.cli import fail_cleanly
from ensemble.core.config import Choice, ConfigError, Range, from_dict, load_params
from ensemble.core.data import DataError, load_battles
from ensemble.core.predictions import is_external, read_oof_file, read_test_file
from ensemble.core.folds import attach_folds, prompt_groups
from ensemble.core.io import write_json, write_parquet
from ensemble.core.metrics import EPS, log_loss, prior_proba, report
from ensemble.oof import INPUT_REPORT
from ensemble.blend.stack import Stacker, StackConfig, fit_stacker
from ensemble.blend.crossfit import crossfit

METHODS = ("weights", "stack")


@dataclass
class BlendConfig:
    models: list[str] = field(default_factory=lambda: ["lgbm", "dual_tower", "llm"])
    method: str = "weights"  # weights | stack
    temperature: bool = True  # weights: fit a temperature on top of the weighted average
    stack: StackConfig = field(default_factory=StackConfig)
    bootstrap: int = 1000  # prompt-level bootstrap resamples for the 95% intervals (0 = none)
    seed: int = 0
    # the seeds' hand-set blend, reported beside the fitted one
    fixed_weights: dict[str, float] = field(default_factory=lambda: {"lgbm": 0.2, "llm": 0.8})

    constraints: ClassVar[dict] = {"method": Choice(*METHODS), "bootstrap": Range(0)}


@dataclass
class Blend:
    models: list[str]
    weights: np.ndarray
    temperature: float = 1.0

    method: ClassVar[str] = "weights"

    def apply(self, probas: list[np.ndarray], frame: pd.DataFrame | None = None) -> np.ndarray:
        return apply_blend(probas, self.weights, self.temperature)

    def to_json(self) -> dict:
        return {"method": self.method, "models": self.models,
                "weights": {m: float(w) for m, w in zip(self.models, self.weights)},
                "temperature": float(self.temperature)}

    @classmethod
    def from_json(cls, obj: dict) -> "Blend":
        models = list(obj["models"])
        return cls(models, np.array([obj["weights"][m] for m in models], dtype=float), float(obj["temperature"]))


def load_blender(obj: dict, path: Path) -> Blend | Stacker:
    """The fitted blender saved in blend.json, whichever method fitted it."""
    method = obj.get("method", "weights") if isinstance(obj, dict) else None
    if method not in METHODS:
        raise DataError(f"{path}: method {method!r} is not one of {', '.join(METHODS)}; rerun python -m ensemble.blend")
    try:
        return Blend.from_json(obj) if method == "weights" else Stacker.from_json(obj)
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{path}: not a complete {method} blend ({type(exc).__name__}: {exc}); "
                        f"rerun python -m ensemble.blend") from None


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


def read_folds(artifacts: Path, train: pd.DataFrame) -> np.ndarray | None:
    """Fold of each training row from artifacts/folds.parquet (None when the folder has none: then
    the OOF files' own fold columns must agree)."""
    path = artifacts / "folds.parquet"
    if not path.is_file():
        return None
    try:
        return attach_folds(train.reset_index(), pd.read_parquet(path))
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from None


def read_oof(artifacts: Path, models: list[str], labels: pd.DataFrame,
             fold_of: np.ndarray | None = None) -> list[np.ndarray]:
    """Each model's OOF matrix aligned row for row with the labelled training ids (checked: see
    ensemble/external.py)."""
    return read_oof_folds(artifacts, models, labels, fold_of)[0]


def read_oof_folds(artifacts: Path, models: list[str], labels: pd.DataFrame,
                   fold_of: np.ndarray | None) -> tuple[list[np.ndarray], np.ndarray]:
    out, source = [], str(artifacts / "folds.parquet")
    for name in models:
        path = artifacts / "oof" / f"{name}.parquet"
        matrix, folds = read_oof_file(path, name, labels.index, fold_of, source)
        if fold_of is None:  # no folds.parquet: the first OOF file's folds are the reference
            fold_of, source = folds, str(path)
        out.append(matrix)
    return out, fold_of


def check_external_tests(artifacts: Path, models: list[str]) -> None:
    """A model from elsewhere is submitted through its test file: check it now, against the prepared
    test file when there is one."""
    test_path = artifacts / "prepared" / "test.parquet"
    ids = load_battles(test_path)["id"] if test_path.is_file() else pd.Series([], dtype=str)
    for name in models:
        if is_external(name):
            read_test_file(artifacts / "test" / f"{name}.parquet", name, ids, str(test_path),
                           "write its predictions for every test id")


def fitters(cfg: BlendConfig, models: list[str]) -> dict:
    """method -> fit(probas, labels, frame) returning an object with .apply(probas, frame)."""
    return {"weights": lambda p, y, f: fit_blend(p, y, models, cfg.temperature),
            "stack": lambda p, y, f: fit_stacker(p, y, f, models, cfg.stack)}


def run(params: dict, artifacts: Path, models: list[str] | None = None, method: str | None = None,
        metrics_path: Path | None = Path("metrics.json")) -> dict:
    """Fit the blend on every OOF row (the one submit applies), score it cross-fitted, write
    blend.json, blend_oof.parquet, artifacts/metrics.json (details) and `metrics_path` (headline)."""
    cfg = from_dict(BlendConfig, params.get("blend", {}), "blend")
    if method is not None and method not in METHODS:
        raise ConfigError(f"--method {method!r} is not allowed; expected one of {', '.join(METHODS)}")
    method = method or cfg.method
    models = models or cfg.models
    if not models:
        raise DataError("blend.models is empty: list at least one model")
    if len(set(models)) < len(models):
        raise ConfigError(f"params blend.models: {models!r} names a model twice")
    start = time.perf_counter()
    train = load_battles(artifacts / "prepared" / "train.parquet").set_index("id")
    labels = train["label"].to_numpy()
    probas, fold_of = read_oof_folds(artifacts, models, train, read_folds(artifacts, train))
    if len(np.unique(fold_of)) < 2:
        raise DataError(f"{artifacts / 'oof' / (models[0] + '.parquet')}: {len(np.unique(fold_of))} fold(s); "
                        f"cross-fitting the blend needs at least 2 (folds.n_splits)")
    check_external_tests(artifacts, models)
    frame = train.reset_index()
    fit = fitters(cfg, models)
    blender = fit[method](probas, labels, frame)
    blended = blender.apply(probas, frame)
    crossfitted = {m: crossfit(fit[m], probas, labels, fold_of, frame) for m in METHODS}
    fit_seconds = time.perf_counter() - start

    groups = prompt_groups(frame)
    ci = lambda a, b: paired_diff_ci(a, b, groups, cfg.bootstrap, cfg.seed) if cfg.bootstrap else None
    prior = prior_proba(labels, len(labels))
    losses = {m: row_log_loss(labels, p) for m, p in zip(models, probas)}
    best = min(models, key=lambda m: losses[m].mean())
    metrics = {"rows": int(len(labels)), "method": method, "prior_log_loss": round(log_loss(labels, prior), 6),
               "class_prior": {t: round(float(v), 6) for t, v in zip(TARGETS, prior[0])},
               "models": {m: {**report(labels, p), "diff_vs_prior_ci": ci(losses[m], row_log_loss(labels, prior))}
                          for m, p in zip(models, probas)},
               "blend": {**report(labels, blended),
                         "crossfit": {"log_loss": round(log_loss(labels, crossfitted[method]), 6),
                                      "accuracy": round(float((crossfitted[method].argmax(1) == labels).mean()), 6)},
                         "crossfit_by_method": {m: round(log_loss(labels, p), 6) for m, p in crossfitted.items()},
                         "best_model": best, "ci_level": 0.95, "bootstrap": cfg.bootstrap,
                         "diff_vs_best_ci": ci(row_log_loss(labels, crossfitted[method]), losses[best])}}
    if method == "weights":
        metrics.update(weights=blender.to_json()["weights"], temperature=round(blender.temperature, 4))
    else:
        metrics.update(stack={"C": blender.c, "features": blender.features(),
                              "inner_cv_log_loss": blender.inner_log_loss})
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

    write_json(artifacts / "blend.json", {**blender.to_json(), "oof_log_loss": metrics["blend"]["log_loss"],
                                          "crossfit_log_loss": metrics["blend"]["crossfit"]["log_loss"]})
    write_json(artifacts / "metrics.json", metrics)
    if metrics_path is not None:
        write_json(metrics_path, headline(metrics))
    oof_frame = pd.DataFrame(blended, columns=list(TARGETS)).assign(id=train.index.to_numpy(), label=labels)
    write_parquet(artifacts / "blend_oof.parquet", oof_frame[["id", "label", *TARGETS]])
    print(format_table(metrics))
    print(f"blend fitted and cross-fitted in {fit_seconds:.2f} s on {len(labels)} rows x {len(models)} model(s)")
    return metrics


def headline(metrics: dict) -> dict:
    """The small, deterministic metrics.json DVC tracks in git (`dvc metrics show/diff`, `dvc exp show`): one
    figure per model and for the blend, and the weights, so `dvc metrics show` stays a short table. The
    intervals ride along as [lo, hi] lists (DVC's tables skip lists); everything else is in the details."""
    b = metrics["blend"]
    out = {"prior_log_loss": metrics["prior_log_loss"],
           "models": {m: {"log_loss": r["log_loss"], "diff_vs_prior_ci": r["diff_vs_prior_ci"]}
                      for m, r in metrics["models"].items()},
           "blend": {"method": metrics["method"], "log_loss_crossfit": b["crossfit"]["log_loss"],
                     "log_loss_insample": b["log_loss"], "diff_vs_best_ci": b["diff_vs_best_ci"]}}
    if "weights" in metrics:
        out["weights"] = {m: round(w, 4) for m, w in metrics["weights"].items()}
    else:
        out["stack_C"] = metrics["stack"]["C"]
    return out


def format_table(metrics: dict) -> str:
    ci = lambda v: f"[{v[0]:+.4f}, {v[1]:+.4f}]" if v else ""
    level = f"{round(100 * metrics['blend']['ci_level'])}% CI"
    lines = [f"{'model':<24}{'weight':>8}{'log_loss':>10}{'accuracy':>10}   {level} of the log-loss difference",
             f"{'class prior':<24}{'':>8}{metrics['prior_log_loss']:>10.4f}{'':>10}"]
    weights = metrics.get("weights", {})
    for m, r in metrics["models"].items():
        w = f"{weights[m]:>8.3f}" if m in weights else f"{'':>8}"
        lines.append(f"{m:<24}{w}{r['log_loss']:>10.4f}{r['accuracy']:>10.4f}   {ci(r['diff_vs_prior_ci'])} vs prior")
    b, method = metrics["blend"], metrics["method"]
    extra = f"T={metrics['temperature']}" if method == "weights" else f"C={metrics['stack']['C']}"
    lines.append(f"{f'blend {method}, in-sample':<24}{'':>8}{b['log_loss']:>10.4f}{b['accuracy']:>10.4f}   "
                 f"fitted and scored on the same rows (optimistic); {extra}")
    lines.append(f"{f'blend {method}, crossfit':<24}{'':>8}{b['crossfit']['log_loss']:>10.4f}"
                 f"{b['crossfit']['accuracy']:>10.4f}   {ci(b['diff_vs_best_ci'])} vs {b['best_model']}")
    for m, v in b["crossfit_by_method"].items():
        if m != method:
            lines.append(f"{f'blend {m}, crossfit':<24}{'':>8}{v:>10.4f}{'':>10}   (--method {m})")
    fb = metrics.get("fixed_blend")
    if fb and "log_loss" in fb:
        w = "/".join(f"{k}={v}" for k, v in fb["weights"].items())
        lines.append(f"{'blend fixed, in-sample':<24}{'':>8}{fb['log_loss']:>10.4f}{fb['accuracy']:>10.4f}   {w}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ensemble.blend", description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--artifacts", default="artifacts")
    ap.add_argument("--models", nargs="+", help="override blend.models")
    ap.add_argument("--method", help=f"override blend.method ({' | '.join(METHODS)})")
    ap.add_argument("--metrics", default="metrics.json", help="headline metrics for DVC (git-tracked)")
    args = ap.parse_args(argv)
    run(load_params(args.params), Path(args.artifacts), args.models, args.method, Path(args.metrics))
    return 0


if __name__ == "__main__":
    sys.exit(fail_cleanly(main))
