"""The contract and the plumbing every stage shares: battle data and its layouts, folds, typed
params, errors, atomic files, scores, progress, calibration, fingerprints and the run's caches."""
