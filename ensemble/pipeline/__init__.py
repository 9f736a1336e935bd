"""The stage logic: out-of-fold runs (oof), teachers and pseudo-labels (distill), submission (submit), the offline
Kaggle bundle (bundle, bundle_predict), two model stages at once (parallel_stages), params profiles (profile) and
the params sections (sections). The DVC stages in stages/ and the user commands call it."""
