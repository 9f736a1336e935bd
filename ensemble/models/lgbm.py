"""CountVectorizer + length-feature LightGBM (the seeds' 0.2 of the 0.2/0.8 blend).

One vocabulary serves both responses, so swapping A and B swaps whole feature blocks: the swap
augmentation and swap test-time averaging then make the model position-unbiased.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

# LightGBM's OpenMP threads spin while waiting; with any other busy process on a 2-core machine that
# made fits ~100x slower here (160 s vs 2 s). Passive waiting costs nothing measurable when idle.
# It must be set before lightgbm (and its libgomp) is loaded.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import joblib  # noqa: E402
import lightgbm as lgb  # noqa: E402
import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.feature_extraction.text import CountVectorizer

from ..data import SWAP_INDEX, swap_ab, unswap_proba
from ..features import numeric_features
from .base import BaseModel


@dataclass
class VectorizerConfig:
    ngram_max: int = 2
    max_features: int = 1000  # per vocabulary (responses, prompt)
    min_df: int = 3
    max_chars: int = 4000  # text cut before counting: long tails add cost, not signal
    prompt: bool = True  # also count prompt n-grams
    binary: bool = False


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
    early_stopping_rounds: int = 30
    n_jobs: int = 2
    seed: int = 42


def _texts(frame: pd.DataFrame, column: str, max_chars: int) -> list[str]:
    return ["\n".join(turns)[:max_chars] for turns in frame[column]]


class LGBMModel(BaseModel):
    name = "lgbm"
    Config = LGBMConfig

    booster: lgb.Booster | None = None

    # --- features ---------------------------------------------------------------------------
    # Counting n-grams is the costly part, so each text is counted once: the A/B-swapped matrix
    # reuses the same count blocks in the other order (only the cheap numeric block is redone).
    def _fit_vectorizers(self, frame: pd.DataFrame) -> tuple:
        """Fit the vocabularies on `frame` and return its count blocks (fit_transform: one pass)."""
        vc = self.config.vectorizer
        make = lambda: CountVectorizer(ngram_range=(1, vc.ngram_max), max_features=vc.max_features,
                                       min_df=vc.min_df, binary=vc.binary, dtype=np.float32)
        a_texts, b_texts = _texts(frame, "response_a", vc.max_chars), _texts(frame, "response_b", vc.max_chars)
        self.response_vec = make()
        both = self.response_vec.fit_transform(a_texts + b_texts).tocsr()
        a, b = both[: len(frame)], both[len(frame):]
        p = None
        if vc.prompt:
            self.prompt_vec = make()
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

    @staticmethod
    def _assemble(frame: pd.DataFrame, a, b, p) -> sp.csr_matrix:
        blocks = [sp.csr_matrix(numeric_features(frame).to_numpy(np.float32)), a, b, a - b]
        if p is not None:
            blocks.append(p)
        return sp.hstack(blocks, format="csr", dtype=np.float32)

    def _matrices(self, frame: pd.DataFrame, swapped: bool, counts: tuple | None = None):
        """The battle matrix and, when `swapped`, the matrix of the A/B-swapped battles (else None)."""
        a, b, p = counts if counts is not None else self._counts(frame)
        x = self._assemble(frame, a, b, p)
        return x, (self._assemble(swap_ab(frame), b, a, p) if swapped else None)

    def _feature_names(self) -> list[str]:
        # numeric names come from a one-row probe so they never drift from features.py
        probe = pd.DataFrame({"id": ["x"], "prompt": [["x"]], "response_a": [["x"]], "response_b": [["x"]]})
        names = [f"num_{c}" for c in numeric_features(probe).columns]
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
    def fit(self, train: pd.DataFrame, valid: pd.DataFrame | None = None) -> "LGBMModel":
        c = self.config
        x, y = self._augmented(train, self._fit_vectorizers(train))
        params = self.lgb_params()
        names = self._feature_names()
        dtrain = lgb.Dataset(x, y, feature_name=names, free_raw_data=True)
        callbacks, valid_sets = [], []
        if valid is not None and len(valid) and c.early_stopping_rounds:
            xv, yv = self._augmented(valid)
            valid_sets = [lgb.Dataset(xv, yv, reference=dtrain)]
            callbacks.append(lgb.early_stopping(c.early_stopping_rounds, verbose=False))
        self.booster = lgb.train(params, dtrain, num_boost_round=c.n_estimators,
                                 valid_sets=valid_sets, callbacks=callbacks)
        return self

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        if self.booster is None:
            raise RuntimeError("LGBMModel.predict_proba called before fit/load")
        best = self.booster.best_iteration or None
        x, x_swapped = self._matrices(frame, self.config.swap_tta)
        proba = self.booster.predict(x, num_iteration=best)
        if self.config.swap_tta:
            swapped = self.booster.predict(x_swapped, num_iteration=best)
            proba = 0.5 * (proba + unswap_proba(swapped))
        return proba / proba.sum(axis=1, keepdims=True)

    def _save_state(self, path: Path) -> None:
        self.booster.save_model(str(path / "booster.txt"), num_iteration=self.booster.best_iteration or None)
        joblib.dump({"response": self.response_vec, "prompt": self.prompt_vec}, path / "vectorizers.joblib")
        (path / "importance.json").write_text(json.dumps(self.top_features(30), indent=1))

    def _load_state(self, path: Path) -> None:
        self.booster = lgb.Booster(model_file=str(path / "booster.txt"))
        vecs = joblib.load(path / "vectorizers.joblib")
        self.response_vec, self.prompt_vec = vecs["response"], vecs["prompt"]

    def top_features(self, k: int = 30) -> list[tuple[str, float]]:
        gain = self.booster.feature_importance("gain")
        order = np.argsort(gain)[::-1][:k]
        names = self.booster.feature_name()
        return [(names[i], round(float(gain[i]), 2)) for i in order]

