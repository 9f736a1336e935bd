"""CountVectorizer + length-feature LightGBM (the seeds' 0.2 of the 0.2/0.8 blend).

One vocabulary serves both responses, so swapping A and B swaps whole feature blocks: the swap
augmentation and swap test-time averaging then make the model position-unbiased.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import lightgbm as lgb  # OMP_WAIT_POLICY=PASSIVE is set by the package's __init__, before lightgbm loads libgomp
import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.feature_extraction.text import CountVectorizer

from ensemble.core.config import AnyOf, Choice, Range
from ensemble.core.data import SWAP_INDEX, swap_ab, unswap_proba
from ensemble.core.features import feature_names, numeric_features
from ensemble.models.base import BaseModel


@dataclass
class VectorizerConfig:
    ngram_max: int = 2
    max_features: int = 1000  # per vocabulary (responses, prompt)
    min_df: int = 3
    max_chars: int = 4000  # text cut before counting: long tails add cost, not signal
    prompt: bool = True  # also count prompt n-grams
    binary: bool = False

    constraints: ClassVar[dict] = {"ngram_max": Range(1), "max_features": Range(1), "min_df": Range(1),
                                   "max_chars": Range(1)}


@dataclass
class LGBMConfig:
    vectorizer: VectorizerConfig = field(default_factory=VectorizerConfig)
    swap_augment: bool = True
    swap_tta: bool = True
    n_estimators: int = 500  # a cap: bounds the stage's time (each round costs ~0.16 s at Kaggle scale)
    learning_rate: float = 0.1
    num_leaves: int = 15
    min_child_samples: int = 20
    feature_fraction: float = 1.0  # per tree
    feature_fraction_bynode: float = 0.5  # per split: as a regulariser like feature_fraction, far cheaper with sparse counts
    bagging_fraction: float = 0.8
    bagging_freq: int = 1
    lambda_l2: float = 1.0
    early_stopping_rounds: int = 30  # 0 = always n_estimators rounds
    # where early stopping looks: inner = the training part only (prompt-grouped inner folds, or one
    # held-out share of its prompts), then a refit on all training rows for the rounds found there;
    # valid = the fold's valid rows, i.e. its OOF rows: optimistic (PandaLM: 0.818 vs 0.832 honest)
    early_stopping: str = "inner"
    early_stopping_folds: int = 3  # inner: prompt-grouped folds (~k x one fit's cost); 0 = one held-out share
    early_stopping_frac: float = 0.2  # inner with early_stopping_folds 0: share of the training prompts held out
    n_jobs: int = 2
    seed: int = 42

    constraints: ClassVar[dict] = {
        "n_estimators": Range(1), "learning_rate": Range(0, low_open=True), "num_leaves": Range(2),
        "min_child_samples": Range(0), "feature_fraction": Range(0, 1, low_open=True),
        "feature_fraction_bynode": Range(0, 1, low_open=True), "bagging_fraction": Range(0, 1, low_open=True),
        "bagging_freq": Range(0), "lambda_l2": Range(0), "early_stopping_rounds": Range(0), "n_jobs": Range(-1),
        "early_stopping": Choice("inner", "valid"), "early_stopping_frac": Range(0, 0.9, low_open=True),
        "early_stopping_folds": AnyOf(Choice(0), Range(2))}  # 1 fold would be no split


VOCAB_FILE = "vocabularies.json"


def vocabulary_json(vec: CountVectorizer | None) -> list[str] | None:
    """A fitted vocabulary as its terms in column order: plain JSON (no pickle to load at submit), the
    same bytes on every run (DVC hashes the fold folder)."""
    if vec is None:
        return None
    return [term for term, _ in sorted(vec.vocabulary_.items(), key=lambda kv: kv[1])]


def vectorizer(cfg: VectorizerConfig, terms: list[str] | None = None) -> CountVectorizer:
    """The CountVectorizer of `cfg`, to fit, or fixed to a saved vocabulary (`terms`, in column order)."""
    vocabulary = {t: i for i, t in enumerate(terms)} if terms is not None else None
    return CountVectorizer(ngram_range=(1, cfg.ngram_max), max_features=cfg.max_features, min_df=cfg.min_df,
                           binary=cfg.binary, dtype=np.float32, vocabulary=vocabulary)


def _texts(frame: pd.DataFrame, column: str, max_chars: int) -> list[str]:
    return ["\n".join(turns)[:max_chars] for turns in frame[column]]


class LGBMModel(BaseModel):
    name = "lgbm"
    Config = LGBMConfig
    fitted_attr = "booster"

    booster: lgb.Booster | None = None

    # --- features ---------------------------------------------------------------------------
    # Counting n-grams is the costly part, so each text is counted once: the A/B-swapped matrix
    # reuses the same count blocks in the other order (only the cheap numeric block is redone).
    def _fit_vectorizers(self, frame: pd.DataFrame) -> tuple:
        """Fit the vocabularies on `frame` and return its count blocks (fit_transform: one pass)."""
        vc = self.config.vectorizer
        a_texts, b_texts = _texts(frame, "response_a", vc.max_chars), _texts(frame, "response_b", vc.max_chars)
        self.response_vec = vectorizer(vc)
        both = self.response_vec.fit_transform(a_texts + b_texts).tocsr()
        a, b = both[: len(frame)], both[len(frame):]
        p = None
        if vc.prompt:
            self.prompt_vec = vectorizer(vc)
            p = self.prompt_vec.fit_transform(_texts(frame, "prompt", vc.max_chars)).tocsr()
        else:
            self.prompt_vec = None
        return a, b, p

    def _counts(self, frame: pd.DataFrame) -> tuple:
        vc = self.config.vectorizer
        a = self.response_vec.transform(_texts(frame, "response_a", vc.max_chars))
        b = self.response_vec.transform(_texts(frame, "response_b", vc.max_chars))
        p = self.prompt_vec.transform(_texts(frame, "prompt", vc.max_chars)) if self.prompt_vec is not None else None
        return a, b, p

    def _assemble(self, frame: pd.DataFrame, a, b, p) -> sp.csr_matrix:
        blocks = [sp.csr_matrix(numeric_features(frame, self.cache).to_numpy(np.float32)), a, b, a - b]
        if p is not None:
            blocks.append(p)
        return sp.hstack(blocks, format="csr", dtype=np.float32)

    def _matrices(self, frame: pd.DataFrame, swapped: bool, counts: tuple | None = None):
        """The battle matrix and, when `swapped`, the matrix of the A/B-swapped battles (else None)."""
        a, b, p = counts if counts is not None else self._counts(frame)
        x = self._assemble(frame, a, b, p)
        return x, (self._assemble(swap_ab(frame), b, a, p) if swapped else None)

    def _feature_names(self) -> list[str]:
        names = [f"num_{c}" for c in feature_names()]
        vocab = self.response_vec.get_feature_names_out()
        names += [f"a_{t}" for t in vocab] + [f"b_{t}" for t in vocab] + [f"d_{t}" for t in vocab]
        if self.prompt_vec is not None:
            names += [f"p_{t}" for t in self.prompt_vec.get_feature_names_out()]
        return [n.replace(" ", "_") for n in names]

    def _augmented(self, frame: pd.DataFrame, counts: tuple | None = None) -> tuple[sp.csr_matrix, np.ndarray]:
        x, x_swapped = self._matrices(frame, self.config.swap_augment, counts)
        y = frame["label"].to_numpy()
        if x_swapped is None:
            return x, y
        return sp.vstack([x, x_swapped], format="csr"), np.concatenate([y, np.asarray(SWAP_INDEX)[y]])

    def lgb_params(self) -> dict:
        """LightGBM's params for this config (bench/bench_lgbm_cost.py times rounds with them)."""
        c = self.config
        return {
            "objective": "multiclass", "num_class": 3, "metric": "multi_logloss",
            "learning_rate": c.learning_rate, "num_leaves": c.num_leaves,
            "min_child_samples": c.min_child_samples, "feature_fraction": c.feature_fraction,
            "feature_fraction_bynode": c.feature_fraction_bynode,
            "bagging_fraction": c.bagging_fraction, "bagging_freq": c.bagging_freq,
            "lambda_l2": c.lambda_l2, "num_threads": c.n_jobs, "seed": c.seed,
            "deterministic": True, "force_row_wise": True, "verbosity": -1,
        }

    # --- estimator API -----------------------------------------------------------------------
    def _fit(self, train: pd.DataFrame, valid: pd.DataFrame | None) -> None:
        c = self.config
        x, y = self._augmented(train, self._fit_vectorizers(train))
        params = self.lgb_params()
        names = self._feature_names()
        rounds = c.n_estimators
        if c.early_stopping_rounds and c.early_stopping == "inner":
            rounds = self._inner_rounds(train, x, y, params, names)
        elif c.early_stopping_rounds and valid is not None and len(valid):  # "valid": the OOF rows choose
            xv, yv = self._augmented(valid)
            dtrain = lgb.Dataset(x, y, feature_name=names, free_raw_data=True)
            self.booster = lgb.train(params, dtrain, num_boost_round=rounds,
                                     valid_sets=[lgb.Dataset(xv, yv, reference=dtrain)],
                                     callbacks=[lgb.early_stopping(c.early_stopping_rounds, verbose=False)])
            return
        dtrain = lgb.Dataset(x, y, feature_name=names, free_raw_data=True)
        self.booster = lgb.train(params, dtrain, num_boost_round=rounds)

    def _inner_rounds(self, train: pd.DataFrame, x, y, params: dict, names: list[str]) -> int:
        """Boosting rounds found by early stopping on held-out training prompts (GroupShuffleSplit by
        prompt): the fold's valid rows never choose anything. Under 10 prompts: n_estimators."""
        from sklearn.model_selection import GroupShuffleSplit

        from ensemble.core.folds import prompt_groups

        c, n = self.config, len(train)
        groups = prompt_groups(train)
        if len(np.unique(groups)) < 10:
            return c.n_estimators
        copies = x.shape[0] // n  # the swap-augmented matrix stacks the swapped copy below
        pick = lambda rows: np.concatenate([rows + i * n for i in range(copies)])
        stop = lgb.early_stopping(c.early_stopping_rounds, verbose=False)
        if c.early_stopping_folds >= 2:  # k prompt-grouped inner folds: the mean curve picks the rounds
            from sklearn.model_selection import GroupKFold

            k = min(c.early_stopping_folds, len(np.unique(groups)))
            splits = [(pick(a), pick(b)) for a, b in GroupKFold(k).split(np.zeros(n), groups=groups)]
            curves = lgb.cv(params, lgb.Dataset(x, y, feature_name=names, free_raw_data=False),
                            num_boost_round=c.n_estimators, folds=splits, callbacks=[stop])
            return max(1, len(next(iter(curves.values()))))
        split = GroupShuffleSplit(n_splits=1, test_size=c.early_stopping_frac, random_state=c.seed)
        fit_rows, stop_rows = next(split.split(np.zeros(n), groups=groups))
        dfit = lgb.Dataset(x[pick(fit_rows)], y[pick(fit_rows)], feature_name=names, free_raw_data=True)
        dstop = lgb.Dataset(x[pick(stop_rows)], y[pick(stop_rows)], reference=dfit)
        inner = lgb.train(params, dfit, num_boost_round=c.n_estimators, valid_sets=[dstop], callbacks=[stop])
        return max(1, inner.best_iteration or c.n_estimators)

    def _predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        best = self.booster.best_iteration or None
        x, x_swapped = self._matrices(frame, self.config.swap_tta)
        proba = self.booster.predict(x, num_iteration=best)
        if self.config.swap_tta:
            swapped = self.booster.predict(x_swapped, num_iteration=best)
            proba = 0.5 * (proba + unswap_proba(swapped))
        return proba / proba.sum(axis=1, keepdims=True)

    def _save_state(self, path: Path) -> None:
        self.booster.save_model(str(path / "booster.txt"), num_iteration=self.booster.best_iteration or None)
        (path / VOCAB_FILE).write_text(json.dumps({"response": vocabulary_json(self.response_vec),
                                                   "prompt": vocabulary_json(self.prompt_vec)}), encoding="utf-8")
        (path / "importance.json").write_text(json.dumps(self.top_features(30), indent=1))

    def _load_state(self, path: Path) -> None:
        self.booster = lgb.Booster(model_file=str(path / "booster.txt"))
        vocab = json.loads((path / VOCAB_FILE).read_text(encoding="utf-8"))
        vc = self.config.vectorizer
        self.response_vec = vectorizer(vc, vocab["response"])
        self.prompt_vec = vectorizer(vc, vocab["prompt"]) if vocab["prompt"] is not None else None

    def top_features(self, k: int = 30) -> list[tuple[str, float]]:
        gain = self.booster.feature_importance("gain")
        order = np.argsort(gain)[::-1][:k]
        names = self.booster.feature_name()
        return [(names[i], round(float(gain[i]), 2)) for i in order]

