"""The blend stage: fit `blend.method` on every OOF row (the blender submit applies), score every
registered blender cross-fitted (each fold blended by a fit on the other folds), with prompt-level
bootstrap intervals, and write blend.json, blend_oof.parquet (the cross-fitted blend: its log loss is
blend.log_loss_crossfit), artifacts/metrics.json (details) and the headline metrics.json.

A model that trained some folds only (`<model>.folds`) has NaN OOF rows elsewhere: the blend is fitted,
cross-fitted and scored on the rows every blended model covers (`covered_rows` in metrics.json). Where
they span one fold only, the cross-fit cannot hold out whole project folds: those rows are split again
into prompt-grouped, label-stratified folds (ensemble.core.folds.make_folds, folds.n_splits of them):
each base prediction there is out-of-fold already, and each blender is scored on prompts it never saw.
That cross-fit is honest about the rows, not about the models: all its rows were predicted by the same
fold model of each base model, so it cannot see how a blend fitted there transfers to the other fold
models or to submit's average; the stage says so in its advice.

`python -m ensemble.blend` runs it in seconds from the existing OOF files; it retrains nothing.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ensemble import TARGETS
from ensemble.blend import BLENDERS, create_blender
from ensemble.blend.bootstrap import PairedBootstrap
from ensemble.blend.config import BlendConfig
from ensemble.blend.crossfit import crossfit
from ensemble.blend.stack import META_COLUMNS, meta_features, shared_fits
from ensemble.blend.weights import apply_blend
from ensemble.core import progress
from ensemble.core.config import ConfigError, from_dict
from ensemble.core.data import DataError, load_battles
from ensemble.core.degenerate import KIND_COLUMN, kinds, masks
from ensemble.core.folds import GROUP_COLUMN, attach_folds, make_folds, prompt_groups
from ensemble.core.io import write_json, write_parquet
from ensemble.core.metrics import accuracy, log_loss, report, row_log_loss
from ensemble.core.position import read as read_position_bias
from ensemble.core.predictions import INPUT_REPORT, PRIOR_FOLDS_ATTR, file_attr, read_oof_file, read_test_file
from ensemble.models import is_registered

#: blend_oof.parquet: the cross-fitted blend (each fold predicted by a blender fitted on the other folds)
BLEND_OOF = "blend_oof.parquet"


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


def read_oof_folds(artifacts: Path, models: list[str], labels: pd.DataFrame,
                   fold_of: np.ndarray | None) -> tuple[list[np.ndarray], np.ndarray]:
    """Each model's OOF matrix aligned row for row with the labelled training ids (checked: see
    ensemble.core.predictions), and the folds."""
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
        if not is_registered(name):
            read_test_file(artifacts / "test" / f"{name}.parquet", name, ids, str(test_path),
                           "write its predictions for every test id")


def check_refit_sections(params: dict, models: list[str]) -> None:
    """`refit_full` for a model from elsewhere (its prediction files only) has nothing to refit: refused."""
    for name in models:
        section = params.get(name)
        if not is_registered(name) and isinstance(section, dict) and "refit_full" in section:
            raise ConfigError(f"params {name}.refit_full: {name} is a model from elsewhere (blend.models reads its "
                              f"prediction files only), there is no training here to refit; remove the key and "
                              f"write its artifacts/test/{name}.parquet from the model you want submitted")


def covered_rows(probas: list[np.ndarray], models: list[str], oof_dir: Path) -> np.ndarray:
    """Rows every model's OOF covers (finite); none in common is a DataError naming each model's share."""
    covered = np.logical_and.reduce([np.isfinite(p).all(axis=1) for p in probas])
    if not covered.any():
        shares = ", ".join(f"{m} {int(np.isfinite(p).all(axis=1).sum())}" for m, p in zip(models, probas))
        raise DataError(f"{oof_dir}: the OOF files of blend.models cover no common rows (rows covered: {shares} "
                        f"of {len(covered)}); give the models at least one common fold in <model>.folds")
    return covered


def crossfit_folds(fold_of: np.ndarray, frame: pd.DataFrame, seed: int) -> tuple[np.ndarray, str]:
    """The folds the blend is cross-fitted on, for the covered rows: the project's folds where they span
    two or more, else those rows split again into as many prompt-grouped folds (see the module docstring)."""
    present = np.unique(fold_of)
    if len(present) >= 2:
        return fold_of, "project folds"
    n_splits = int(frame.attrs.get("n_splits", 5))
    inner = make_folds(frame, n_splits, seed)["fold"].to_numpy()
    return inner, f"{n_splits} prompt-grouped folds within project fold {int(present[0])}"


def scores(labels: np.ndarray, proba: np.ndarray) -> dict:
    return {"log_loss": round(log_loss(labels, proba), 6),
            "accuracy": round(accuracy(labels, proba), 6)}


def run(params: dict, artifacts: Path, models: list[str] | None = None, method: str | None = None,
        metrics_path: Path | None = Path("metrics.json")) -> dict:
    cfg = from_dict(BlendConfig, params.get("blend", {}), "blend")
    if method is not None and method not in BLENDERS:
        raise ConfigError(f"--method {method!r} is not allowed; expected one of {', '.join(BLENDERS)}")
    method = method or cfg.method
    models = models or cfg.models
    if not models:
        raise DataError("blend.models is empty: list at least one model")
    if len(set(models)) < len(models):
        raise ConfigError(f"params blend.models: {models!r} names a model twice")
    check_refit_sections(params, models)
    start = time.perf_counter()
    train = load_battles(artifacts / "prepared" / "train.parquet").set_index("id")
    probas, fold_of = read_oof_folds(artifacts, models, train, read_folds(artifacts, train))
    if len(np.unique(fold_of)) < 2:
        raise DataError(f"{artifacts / 'oof' / (models[0] + '.parquet')}: {len(np.unique(fold_of))} fold(s); "
                        f"cross-fitting the blend needs at least 2 (folds.n_splits)")
    n_splits = len(np.unique(fold_of))
    covered = covered_rows(probas, models, artifacts / "oof")
    check_external_tests(artifacts, models)
    all_ids, all_labels, project_folds = train.index, train["label"].to_numpy(dtype=np.int64), fold_of
    train, fold_of = train[covered], fold_of[covered]  # from here on: the rows every model covers
    probas = [p[covered] for p in probas]
    labels = train["label"].to_numpy(dtype=np.int64)
    frame = train.reset_index()
    frame.attrs["n_splits"] = n_splits
    fold_of, crossfit_on = crossfit_folds(fold_of, frame, cfg.seed)
    frame = frame.assign(fold=fold_of)
    progress.log(f"blend: {len(labels)} of {len(all_ids)} training rows covered by every model "
                 f"({', '.join(models)}); cross-fitted on {crossfit_on}")
    # once, for every blender fitted below and every fold and inner fold it sees: the degenerate
    # kinds (ensemble.core.degenerate), the prompt groups and the stacker's meta-features
    frame[KIND_COLUMN] = kinds(frame)
    frame[GROUP_COLUMN] = prompt_groups(frame)
    frame[list(META_COLUMNS)] = meta_features(frame)

    def make(name: str):
        return lambda: create_blender(name, models, cfg)

    with shared_fits():  # a stacker fitted again on the same rows reuses that fit (blend.stack)
        blender = make(method)().fit(probas, labels, frame)  # on every row: what submit applies
        insample = blender.predict(probas, frame)
        fold_blenders: list = []  # each cross-fitted fold's blender (select: what it chose there)
        crossfitted = {}
        for name in BLENDERS:
            kept = fold_blenders if name == method else None
            crossfitted[name] = crossfit(make(name), probas, labels, fold_of, frame, kept)
        honest = crossfitted[method]
        fit_seconds = time.perf_counter() - start
        degenerate = degenerate_scores(cfg, method, models, probas, labels, fold_of, frame, honest)

    # one set of prompt resamples for every interval below
    boot = PairedBootstrap(frame[GROUP_COLUMN].to_numpy(), cfg.bootstrap, cfg.seed) if cfg.bootstrap else None

    def ci(a, b):
        return boot.ci(a, b) if boot is not None else None

    prior = crossfitted["prior"]  # the class prior of the other folds: what a model must beat on each fold
    prior_loss = row_log_loss(labels, prior)
    losses = {m: row_log_loss(labels, p) for m, p in zip(models, probas)}
    best = min(models, key=lambda m: losses[m].mean())

    def compared(proba: np.ndarray) -> dict:
        loss = row_log_loss(labels, proba)
        return {"diff_vs_prior_ci": ci(loss, prior_loss), "diff_vs_best_ci": ci(loss, losses[best])}
    metrics = {"rows": int(len(labels)), "covered_rows": int(len(labels)), "training_rows": int(len(all_ids)),
               "crossfit_folds": crossfit_on, "method": method,
               "prior": {**scores(labels, prior), "class_counts": np.bincount(labels, minlength=3).tolist()},
               "models": {m: {**report(labels, p), "diff_vs_prior_ci": ci(losses[m], row_log_loss(labels, prior))}
                          for m, p in zip(models, probas)},
               "blend": {**report(labels, honest), "scored": "crossfit",
                         "insample": scores(labels, insample),
                         "by_method": {name: {**scores(labels, p), **compared(p)} for name, p in crossfitted.items()},
                         "best_model": best, "ci_level": 0.95, "bootstrap": cfg.bootstrap,
                         "fold_summaries": [b.summary() for b in fold_blenders],
                         "diff_vs_best_ci": ci(row_log_loss(labels, honest), losses[best]),
                         "diff_vs_prior_ci": ci(row_log_loss(labels, honest), row_log_loss(labels, prior))},
               "blender": {"method": method, "summary": blender.summary(), "weights": blender.model_weights()}}
    n_folds = len(np.unique(fold_of))
    for m in models:  # single-pass A/B order sensitivity, from the OOF files' metadata (ensemble.position)
        bias = read_position_bias(artifacts / "oof" / f"{m}.parquet")
        if bias is not None:
            metrics["models"][m]["position_bias"] = bias
        prior_folds = file_attr(artifacts / "oof" / f"{m}.parquet", PRIOR_FOLDS_ATTR)
        if isinstance(prior_folds, list):  # folds where the model fell back to the class prior (ensemble.pipeline.oof)
            metrics["models"][m]["prior_folds"] = len(prior_folds)
            metrics["models"][m]["folds"] = n_folds
    metrics["advice"] = advice(metrics)
    inputs = {m: json.loads((artifacts / "models" / m / INPUT_REPORT).read_text(encoding="utf-8"))
              for m in models if (artifacts / "models" / m / INPUT_REPORT).is_file()}
    if inputs:  # share of each text kept after truncation, per transformer model
        metrics["input"] = inputs
    metrics["degenerate"] = degenerate
    if blender.degenerate_ is not None:  # the rule submit applies: its numbers and the kinds it predicts
        metrics["degenerate"]["rule"] = blender.degenerate_.to_json()
    fixed = dict(cfg.fixed_weights)
    if fixed and set(fixed) <= set(models):  # hand-set: nothing fitted, so scoring it on every row is fair
        w = np.array([fixed.get(m, 0.0) for m in models], dtype=float)
        metrics["fixed_blend"] = {"weights": fixed, **scores(labels, apply_blend(probas, w / w.sum()))}
    elif fixed:
        metrics["fixed_blend"] = {"weights": fixed, "skipped": f"needs OOF of {sorted(set(fixed) - set(models))}"}

    write_json(artifacts / "blend.json", {**blender.to_json(), "crossfit_log_loss": metrics["blend"]["log_loss"],
                                          "insample_log_loss": metrics["blend"]["insample"]["log_loss"]})
    write_json(artifacts / "metrics.json", metrics)
    if metrics_path is not None:
        write_json(metrics_path, headline(metrics))
    blended = np.full((len(all_ids), 3), np.nan)  # one row per training id, as the OOF files: NaN where not covered
    blended[covered] = honest
    oof_frame = pd.DataFrame(blended, columns=list(TARGETS)).assign(id=all_ids.to_numpy(), label=all_labels,
                                                                    fold=project_folds)
    write_parquet(artifacts / BLEND_OOF, oof_frame[["id", "label", "fold", *TARGETS]])
    print(format_table(metrics))
    for line in metrics["advice"]:
        print(line)
    print(f"blend fitted and cross-fitted in {fit_seconds:.2f} s on {len(labels)} rows x {len(models)} model(s)")
    return metrics


def advice(metrics: dict) -> list[str]:
    """Lines for what a reader of the table should not miss: models that learned nothing on some folds, and
    a chosen blend that does worse than the best single model, with what to try."""
    lines = []
    if "within project fold" in metrics["crossfit_folds"]:
        lines.append(f"note: every blended model covers one fold only ({metrics['covered_rows']} rows): each model's "
                     f"predictions there come from one fold model, so this cross-fit cannot see how the blend "
                     f"transfers to other fold models or to their average at submit; its score is optimistic "
                     f"(PandaLM: 0.774 here, 1.119 on the other folds' rows). Prefer --method best or weights, "
                     f"or give the models a second common fold")
    for m, r in metrics["models"].items():
        if r.get("prior_folds"):
            lines.append(f"note: {m} predicts the class prior on {r['prior_folds']} of its {r['folds']} folds: there "
                         f"it showed no gain over the prior on its held-out training prompts (each such fold's "
                         f"log line gives the calibration gate's numbers); on this data it adds nothing there")
    b = metrics["blend"]
    best = metrics["models"][b["best_model"]]
    ci = b["diff_vs_best_ci"]
    if b["log_loss"] > best["log_loss"]:
        sure = f" (95% CI of the difference {ci[0]:+.4f} to {ci[1]:+.4f})" if ci else ""
        lines.append(f"note: the blend ({metrics['method']}, cross-fitted {b['log_loss']:.4f}) is worse than its best "
                     f"single model {b['best_model']} ({best['log_loss']:.4f}){sure}; try `python -m ensemble.blend "
                     f"--method best` or `--method weights`, or drop the weak models from blend.models")
    return lines


def degenerate_scores(cfg, method: str, models: list[str], probas, labels: np.ndarray, fold_of: np.ndarray,
                      frame: pd.DataFrame, honest: np.ndarray) -> dict:
    """How many battles have identical or empty answers, and the cross-fitted blend's log loss on them with
    the rule (as fitted) and without it (the same blender cross-fitted with blend.degenerate off)."""
    groups = masks(kinds(frame))
    out = {"mode": cfg.degenerate.mode, "prior_weight": cfg.degenerate.prior_weight}
    without = None
    if cfg.degenerate.mode != "off" and any(g.any() for g in groups.values()):
        off = dataclasses.replace(cfg, degenerate=dataclasses.replace(cfg.degenerate, mode="off"))
        without = crossfit(lambda: create_blender(method, models, off), probas, labels, fold_of, frame)
    for name, rows in groups.items():
        entry = {"rows": int(rows.sum())}
        if rows.any():
            entry["log_loss"] = round(log_loss(labels[rows], honest[rows]), 6)
            if without is not None:
                entry["log_loss_without_rule"] = round(log_loss(labels[rows], without[rows]), 6)
        out[name] = entry
    return out


def headline(metrics: dict) -> dict:
    """The small, deterministic metrics.json DVC tracks in git (`dvc metrics show/diff`, `dvc exp show`): log
    loss and accuracy of the prior, each model and the cross-fitted blend, and what `select` chose, so
    `dvc metrics show` stays a short table (11 columns with three models). The intervals ride along as
    [lo, hi] lists (DVC's tables skip lists); everything else (position flips, folds at the prior, the
    in-sample score, per-class figures) is in artifacts/metrics.json."""
    b = metrics["blend"]
    out = {"prior": {"log_loss": metrics["prior"]["log_loss"]},
           "models": {m: {"log_loss": r["log_loss"], "accuracy": r["accuracy"],
                          "diff_vs_prior_ci": r["diff_vs_prior_ci"]}
                      for m, r in metrics["models"].items()},
           "blend": {"log_loss_crossfit": b["log_loss"], "accuracy_crossfit": b["accuracy"],
                     "diff_vs_best_ci": b["diff_vs_best_ci"], "diff_vs_prior_ci": b["diff_vs_prior_ci"]}}
    chosen = metrics["blender"]["summary"].get("chosen")
    if chosen:
        out["blend"]["chosen"] = chosen
    if metrics["blender"]["weights"] is not None:
        out["weights"] = {m: round(w, 4) for m, w in metrics["blender"]["weights"].items()}
    return out


def format_table(metrics: dict) -> str:
    def ci(v):
        return f"[{v[0]:+.4f}, {v[1]:+.4f}]" if v else ""

    level = f"{round(100 * metrics['blend']['ci_level'])}% CI"
    b, method = metrics["blend"], metrics["method"]
    weights = metrics["blender"]["weights"] or {}
    lines = [f"{'':<30}{'weight':>8}{'log_loss':>10}{'accuracy':>10}   {level} of the log-loss difference",
             f"{'class prior (crossfit)':<30}{'':>8}"
             f"{metrics['prior']['log_loss']:>10.4f}{metrics['prior']['accuracy']:>10.4f}"
             f"   the class frequencies of the other folds"]
    for m, r in metrics["models"].items():
        w = f"{weights[m]:>8.3f}" if m in weights else f"{'':>8}"
        at_prior = f"; the prior on {r['prior_folds']} of {r['folds']} folds" if r.get("prior_folds") else ""
        lines.append(f"{m:<30}{w}{r['log_loss']:>10.4f}{r['accuracy']:>10.4f}   {ci(r['diff_vs_prior_ci'])} vs prior"
                     f"{at_prior}")
    summary = ", ".join(f"{k}={v}" for k, v in metrics["blender"]["summary"].items() if not isinstance(v, dict))
    lines.append(f"{f'blend {method}, crossfit':<30}{'':>8}{b['log_loss']:>10.4f}{b['accuracy']:>10.4f}   "
                 f"{ci(b['diff_vs_best_ci'])} vs {b['best_model']}, {ci(b['diff_vs_prior_ci'])} vs prior")
    lines.append(f"{f'blend {method}, in-sample':<30}{'':>8}{b['insample']['log_loss']:>10.4f}"
                 f"{b['insample']['accuracy']:>10.4f}   fitted and scored on the same rows (optimistic); {summary}")
    chosen = [s.get("chosen") for s in b.get("fold_summaries", [])]
    if any(chosen):  # select: what each fold of the cross-fit chose, beside what submit applies
        applied = metrics["blender"]["summary"].get("chosen")
        lines.append(f"{'':<30}{'':>8}{'':>10}{'':>10}   {method} applies {applied}; "
                     f"per cross-fitted fold it chose {', '.join(chosen)}")
    for name, v in b["by_method"].items():
        if name != method:
            lines.append(f"{f'blend {name}, crossfit':<30}{'':>8}{v['log_loss']:>10.4f}{v['accuracy']:>10.4f}"
                         f"   {ci(v.get('diff_vs_best_ci'))} vs {b['best_model']}, "
                         f"{ci(v.get('diff_vs_prior_ci'))} vs prior (--method {name})")
    for m, r in metrics["models"].items():
        pb = r.get("position_bias")
        if pb:
            lines.append(f"{f'  {m} position bias':<30}{'':>8}{'':>10}{'':>10}   single pass, A/B swapped: verdict "
                         f"flips on {100 * pb['flip_share']:.1f}% of {pb['rows']} battles, mean |P(A) gap| "
                         f"{pb['mean_gap']:.3f}")
    deg = metrics.get("degenerate") or {}
    for name in ("identical", "one_empty"):
        e = deg.get(name) or {}
        if e.get("rows"):
            was = f", {e['log_loss_without_rule']:.4f} without the rule" if "log_loss_without_rule" in e else ""
            lines.append(f"{f'  {name} answers':<30}{e['rows']:>8}{e['log_loss']:>10.4f}{'':>10}   "
                         f"blend crossfit on these battles (rule {deg['mode']}{was})")
    fb = metrics.get("fixed_blend")
    if fb and "log_loss" in fb:
        w = "/".join(f"{k}={v}" for k, v in fb["weights"].items())
        lines.append(f"{'blend fixed (hand-set)':<30}{'':>8}{fb['log_loss']:>10.4f}{fb['accuracy']:>10.4f}   {w}")
    return "\n".join(lines)
