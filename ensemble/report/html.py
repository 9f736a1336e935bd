"""`report.html`: one self-contained page (figures inline as PNG, no scripts, no network) with the
scores, weights, reliability curves, confusion matrices and log loss by slice of every model and
the blend. Output is deterministic: no timestamps, no PNG software tag, so the same inputs give the
same bytes.
"""

from __future__ import annotations

import base64
import html
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ensemble import TARGETS  # noqa: E402
from ensemble.report import BLEND, ReportInputs, confusion, reliability, slice_table, summary_rows, truncation_flags

CLASS_TITLES = ("P(A wins)", "P(B wins)", "P(tie)")
OUTCOMES = ("A wins", "B wins", "tie")
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf")
BLEND_COLOR = "#d62728"
#: Reliability bins with fewer battles than this are drawn with hollow markers.
MIN_BIN = 20
CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:24px auto;max-width:1280px;
color:#222;padding:0 16px;line-height:1.4}
h1{margin-bottom:4px}h2{border-bottom:1px solid #ccc;padding-bottom:4px;margin-top:36px}
table{border-collapse:collapse;margin:8px 0 16px}th,td{border:1px solid #ddd;padding:4px 8px;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}tr.group td{background:#fafafa;font-weight:600;text-align:left}
td.worst{background:#fde0dc;font-weight:600}td.best{background:#e3f2e1}
img{max-width:100%;height:auto;display:block;margin:8px 0}.note{color:#555;font-size:0.92em}
.warn{color:#8a4b00;background:#fff4e0;padding:4px 8px}
nav a{margin-right:14px}code{background:#f3f3f3;padding:0 3px}
"""


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None}, bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="figure" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode("ascii")}">'


def _color(name: str, models: list[str]) -> str:
    return BLEND_COLOR if name == BLEND else COLORS[models.index(name) % len(COLORS)]


def _reliability_axes(ax, j: int, series: list[tuple[str, np.ndarray, str]], labels: np.ndarray) -> None:
    ax.plot([0, 1], [0, 1], ls="--", color="#888", lw=1, label="perfect calibration")
    for name, proba, color in series:
        table = reliability(proba[:, j], labels == j)
        ax.plot(table["predicted"], table["observed"], color=color, label=name, lw=2.2 if name == BLEND else 1.3)
        few = table["count"] < MIN_BIN  # noisy bins: hollow markers
        ax.scatter(table["predicted"], table["observed"], s=18, color=color, zorder=3,
                   facecolors=np.where(few, "white", color).tolist())
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="mean predicted probability", ylabel="observed frequency",
           title=CLASS_TITLES[j])
    ax.set_box_aspect(1)
    ax.grid(alpha=0.3)


def fig_overview(data: ReportInputs) -> str:
    """Reliability of every model and the blend, one panel per class, with the diagonal."""
    models = data.models
    series = [(n, p, _color(n, models)) for n, p in data.probas.items()]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.8), layout="constrained")
    for j, ax in enumerate(axes):
        _reliability_axes(ax, j, series, data.labels)
    axes[0].legend(loc="upper left", fontsize=8)
    return _png(fig)


def fig_section(name: str, data: ReportInputs) -> str:
    """One model (or the blend): reliability per class with bin counts, and its confusion matrix."""
    proba = data.probas[name]
    color = _color(name, data.models)
    fig, axes = plt.subplots(1, 4, figsize=(14, 4.1), gridspec_kw={"width_ratios": [1, 1, 1, 1.1]},
                             layout="constrained")
    for j in range(3):
        _reliability_axes(axes[j], j, [(name, proba, color)], data.labels)
        hist = np.histogram(proba[:, j], bins=10, range=(0, 1))[0]  # drawn in the bottom quarter
        axes[j].bar(np.linspace(0.05, 0.95, 10), 0.25 * hist / max(hist.max(), 1), width=0.1, color=color,
                    alpha=0.15, zorder=0)
    axes[0].legend(loc="upper left", fontsize=8)
    counts = confusion(data.labels, proba)
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    ax = axes[3]
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(3):
        for k in range(3):
            ax.text(k, i, f"{counts[i, k]}\n{share[i, k]:.0%}", ha="center", va="center",
                    color="white" if share[i, k] > 0.55 else "black", fontsize=10)
    ax.set(xticks=range(3), yticks=range(3), xticklabels=OUTCOMES, yticklabels=OUTCOMES,
           xlabel="predicted (argmax)", ylabel="actual", title="confusion matrix (row share)")
    return _png(fig)


def fig_slices(table: pd.DataFrame, data: ReportInputs) -> str:
    """Log loss per slice: one marker per model, the blend with its 95% interval, the prior as a grey bar."""
    names = list(data.probas)
    y = np.arange(len(table))[::-1]
    fig, ax = plt.subplots(figsize=(13, 0.36 * len(table) + 1.6), layout="constrained")
    ax.scatter(table["prior"], y, marker="|", s=260, color="#999", label="class prior", zorder=1)
    offsets = np.linspace(-0.25, 0.25, len(names))
    for name, off in zip(names, offsets):
        kw = {"xerr": table["blend_pm"], "capsize": 2} if name == BLEND else {}
        ax.errorbar(table[name], y + off, fmt="D" if name == BLEND else "o", color=_color(name, data.models),
                    ms=6 if name == BLEND else 4.5, label=name, **kw)
    ax.set_yticks(y, [f"{g}: {s} (n={n})" if g != "all" else f"all battles (n={n})"
                      for g, s, n in zip(table["group"], table["slice"], table["n"])], fontsize=8.5)
    lo = float(np.nanmin((table[names + ["prior"]].min(axis=1) - table["blend_pm"]).clip(lower=0.05)))
    hi = float(np.nanmax(table[names + ["prior"]].max(axis=1) + table["blend_pm"]))
    if hi / lo > 3:  # one slice (ties, usually) far off: a log axis keeps the others readable
        ax.set_xscale("log")
        ticks = [t for t in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0, 1.2, 1.5, 2, 2.5, 3, 4, 5, 7, 10, 20)
                 if lo * 0.95 <= t <= hi * 1.05]
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.minorticks_off()
    ax.set_xlim(lo * 0.95, hi * 1.05)
    ax.set_ylim(-0.7, len(table) - 0.3)
    for k in range(0, len(table), 2):  # banding, so a marker reads against its own row
        ax.axhspan(y[k] - 0.5, y[k] + 0.5, color="#f4f4f4", zorder=0)
    ax.set_xlabel("log loss (lower is better)" + (", log scale" if ax.get_xscale() == "log" else ""))
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    ax.set_title("Log loss by slice (OOF)")
    return _png(fig)


# -- HTML -----------------------------------------------------------------------------------------


def _e(value) -> str:
    return html.escape(str(value))


def _num(value, digits: int = 4) -> str:
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.{digits}f}"


def _ci(row: dict, best: str) -> str:
    """Every interval metrics.json holds for this row: of its log loss or accuracy, or of a log-loss difference
    (a model vs the class prior, the cross-fitted blend vs the best single model), as the blend stage writes."""
    labels = {"log_loss": "", "accuracy": "accuracy ", "diff_vs_prior": "vs prior ", "diff_vs_best": f"vs {best} "}

    def fmt(k, v):
        return f"[{v:+.4f}" if k.startswith("diff") else f"[{v:.4f}"

    parts = []
    for key, (lo, hi) in row["ci"].items():
        label = labels.get(key, f"{key} ")
        parts.append(_e(label) + fmt(key, lo) + ", " + fmt(key, hi)[1:] + "]")
    return "<br>".join(parts)


def _summary(data: ReportInputs) -> str:
    rows = summary_rows(data)
    saved = data.metrics.get("prior", {})
    if "log_loss" in saved:  # the blend stage's: each fold's class frequencies of the other folds
        prior, prior_label, prior_acc = float(saved["log_loss"]), "class prior (cross-fitted)", saved.get("accuracy")
    else:  # no metrics: the frequencies of these very rows (in-sample, a little optimistic)
        prior = float(-np.log(np.bincount(data.labels, minlength=3)[data.labels] / len(data.labels)).mean())
        prior_label, prior_acc = "class prior (in-sample)", None
    best = str(data.metrics.get("blend", {}).get("best_model", "best model"))
    has_ci = any(r["ci"] for r in rows)
    head = ["model", "blend weight", "log loss", "accuracy", "gain over prior (nats)"] + \
        (["95% interval (of the log loss, or of the difference)"] if has_ci else [])
    out = ["<table><tr>" + "".join(f'<th class="{"l" if i == 0 else ""}">{h}</th>' for i, h in enumerate(head))
           + "</tr>"]
    out.append(f'<tr><td class="l">{prior_label}</td><td></td><td>{prior:.4f}</td><td>{_num(prior_acc)}</td><td>0</td>'
               + ("<td></td>" if has_ci else "") + "</tr>")
    for r in rows:
        cells = [f'<td class="l">{"<b>" + _e(r["label"]) + "</b>" if r["name"] == BLEND else _e(r["label"])}</td>',
                 f"<td>{_num(r['weight'], 3)}</td>", f"<td>{_num(r['log_loss'])}</td>",
                 f"<td>{_num(r['accuracy'])}</td>", f"<td>{_num(prior - r['log_loss'])}</td>"]
        cells += [f'<td class="l">{_ci(r, best)}</td>'] if has_ci else []
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    note = ("Intervals: 95%, paired bootstrap over prompts, from metrics.json; one that contains 0 says the "
            "difference may be noise.") if has_ci else \
        "No confidence intervals in metrics.json yet (no key containing <code>ci</code>)."
    return "\n".join(out) + f'<p class="note">Scores are recomputed from the OOF files. {note}</p>'


def _class_table(name: str, data: ReportInputs) -> str:
    counts = confusion(data.labels, data.probas[name])
    mean_p = data.probas[name].mean(axis=0)
    out = ['<table><tr><th class="l">class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th>'
           '<th>mean predicted P</th><th>actual share</th></tr>']
    for j, col in enumerate(TARGETS):
        tp, pred, act = counts[j, j], counts[:, j].sum(), counts[j].sum()
        p, r = (tp / pred if pred else 0.0), (tp / act if act else 0.0)
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        out.append(f'<tr><td class="l">{col}</td><td>{p:.3f}</td><td>{r:.3f}</td><td>{f1:.3f}</td><td>{act}</td>'
                   f"<td>{mean_p[j]:.3f}</td><td>{act / len(data.labels):.3f}</td></tr>")
    return "\n".join(out) + "</table>"


def _slices_html(table: pd.DataFrame, data: ReportInputs) -> str:
    names = list(data.probas)
    head = ['<th class="l">slice</th>', "<th>battles</th>", "<th>tie share</th>", "<th>class prior</th>"]
    head += [f"<th>{'blend (95% CI)' if n == BLEND else _e(n)}</th>" for n in names]
    out = ["<table><tr>" + "".join(head) + "</tr>"]
    sliced = table[table["group"] != "all"]
    worst = {n: sliced[n].idxmax() for n in names} if len(sliced) else {}
    best = {n: sliced[n].idxmin() for n in names} if len(sliced) else {}
    group = None
    for i, row in table.iterrows():
        if row["group"] != group:
            group = row["group"]
            if group != "all":
                out.append(f'<tr class="group"><td colspan="{4 + len(names)}">{_e(group)}</td></tr>')
        cells = [f'<td class="l">{_e(row["slice"])}</td>', f"<td>{row['n']}</td>", f"<td>{row['tie_share']:.2f}</td>",
                 f"<td>{row['prior']:.4f}</td>"]
        for n in names:
            cls = "worst" if worst.get(n) == i else "best" if best.get(n) == i else ""
            pm = f" &plusmn; {row['blend_pm']:.3f}" if n == BLEND and not np.isnan(row["blend_pm"]) else ""
            cells.append(f'<td class="{cls}">{row[n]:.4f}{pm}</td>')
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "\n".join(out) + "</table>"


def _inputs_html(data: ReportInputs) -> str:
    flags = truncation_flags(data)
    if not data.inputs:
        return "<p>No model wrote an <code>input.json</code> (none truncates its input).</p>"
    out = ['<table><tr><th class="l">model</th><th>max_len</th><th class="l">part</th><th>share of tokens kept</th>'
           "<th>share of battles cut</th></tr>"]
    for name, info in data.inputs.items():
        for part, value in info.items():
            if isinstance(value, dict) and "kept_share" in value:
                out.append(f'<tr><td class="l">{_e(name)}</td><td>{_e(info.get("max_len", ""))}</td><td class="l">'
                           f'{_e(part)}</td><td>{value["kept_share"]:.3f}</td>'
                           f'<td>{value.get("battles_cut", 0):.3f}</td></tr>')
        if "battles_cut_any" in info:
            out.append(f'<tr><td class="l">{_e(name)}</td><td>{_e(info.get("max_len", ""))}</td>'
                       f'<td class="l">any part</td><td></td><td>{info["battles_cut_any"]:.3f}</td></tr>')
    out.append("</table>")
    out.append("<p>The <i>truncated</i> slices are per battle, but no per-battle flags are saved, so they use a "
               "character-length proxy:</p><ul>" +
               "".join(f"<li><b>{_e(n)}</b>: {_e(how)}</li>" for n, (_, how) in flags.items()) + "</ul>"
               "<p class=\"note\">Cut battles are also the long ones, so a truncated slice mixes the effect of "
               "truncation with that of length: read it beside the length-ratio slices.</p>")
    return "\n".join(out)


def _position_html(data: ReportInputs) -> str:
    """Per model: how often its single-pass verdict follows the order of the answers (ensemble.core.position)."""
    rows = [(m, r["position_bias"]) for m, r in data.metrics.get("models", {}).items() if r.get("position_bias")]
    if not rows:
        return ""
    body = "".join(f'<tr><td class="l">{_e(m)}</td><td>{b["rows"]}</td><td>{100 * b["flip_share"]:.1f}%</td>'
                   f'<td>{_num(b["mean_gap"], 3)}</td></tr>' for m, b in rows)
    return ('<h3>Position bias</h3><table><tr><th class="l">model</th><th>battles</th><th>verdict flips when A and '
            'B are swapped</th><th>mean |P(A) gap|</th></tr>' + body + "</table>"
            '<p class="note">Each model\'s single pass (swap TTA off) on its held-out rows, as given and with the '
            "answers exchanged: the share of battles whose argmax changes, and the mean gap between P(A) and the "
            "swapped pass's probability for the same answer. 0 is an order-blind model; swap TTA averages the two "
            "passes and removes what is left.</p>")


def _degenerate_html(data: ReportInputs) -> str:
    """Identical and empty answers: how many, the blend on them, and whether the frequency rule predicts them."""
    deg = data.metrics.get("degenerate")
    if not deg:
        return ""
    use = (deg.get("rule") or {}).get("use", {})
    rows = []
    for name, what in (("identical", "identical answers"), ("one_empty", "one answer empty")):
        e = deg.get(name, {})
        without = _num(e.get("log_loss_without_rule"))
        rows.append(f'<tr><td class="l">{what}</td><td>{e.get("rows", 0)}</td><td>{_num(e.get("log_loss"))}</td>'
                    f'<td>{without}</td><td class="l">{"yes" if use.get(name) else "no"}</td></tr>')
    return ('<h3>Degenerate battles</h3><table><tr><th class="l">kind</th><th>battles</th><th>blend log loss</th>'
            '<th>without the rule</th><th class="l">rule used at submit</th></tr>' + "".join(rows) + "</table>"
            f'<p class="note">Battles whose answers are identical or where one is empty are predicted from the '
            f"training rows' own frequencies for such battles (shrunk toward the prior by "
            f"{_e(deg.get('prior_weight'))} pseudo-battles), where that beats the blend on the blender's own rows "
            f"(mode {_e(deg.get('mode'))}); cross-fitted figures.</p>")


def render(data: ReportInputs, sources: dict[str, str]) -> str:
    table = slice_table(data)
    counts = np.bincount(data.labels, minlength=3)
    summary = data.metrics.get("blender", {}).get("summary", {})
    described = ", ".join(f"{k} {v}" for k, v in summary.items() if not isinstance(v, (dict, list)))
    weights = " + ".join(f"{w:.3f} x {_e(m)}" for m, w in data.weights.items())
    sections = [BLEND] + data.models
    nav = " ".join(f'<a href="#{_e(n)}">{_e(n)}</a>' for n in ["summary", "slices", *sections, "inputs"])
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', "<title>Arena ensemble report</title>",
        f"<style>{CSS}</style></head><body>", "<h1>Arena ensemble report</h1>",
        f'<p>{len(data.labels)} labelled battles, out-of-fold predictions'
        f'{f" from {data.folds} folds" if data.folds else ""}; actual outcomes: A wins {counts[0]}, '
        f'B wins {counts[1]}, tie {counts[2]}. '
        f'Blend: method {_e(data.method)}{f" ({_e(described)})" if described else ""}'
        f'{f": {weights}" if weights else ""}. Every blend figure below is cross-fitted (each fold blended by a '
        f'blender fitted on the other folds) unless its row says in-sample.</p>',
        f"<nav>{nav}</nav>",
        '<h2 id="summary">Scores and weights</h2>', _summary(data),
        *(f'<p class="warn">{_e(line)}</p>' for line in data.metrics.get("advice", [])),
        f'<p class="note">Reliability of every model and the blend (OOF, 10 equal-width bins of the predicted '
        f"probability; hollow markers: bins with fewer than {MIN_BIN} battles). On the diagonal, a predicted 30% "
        f"happens 30% of the time; a curve flatter than the diagonal means overconfident predictions, a steeper "
        f"one underconfident.</p>", fig_overview(data),
        '<h2 id="slices">Log loss by slice</h2>',
        '<p class="note">Mean OOF log loss of the battles in each slice. Red: the slice where that model does worst; '
        "green: best. The blend's interval is a normal 95% interval of its mean loss in the slice "
        "(1.96 standard errors). Small slices are noisy.</p>",
        _slices_html(table, data), fig_slices(table, data), _position_html(data), _degenerate_html(data),
    ]
    for name in sections:
        title = f"blend ({data.method}, cross-fitted)" if name == BLEND else f"model: {name}"
        weight = f' (blend weight {data.weights[name]:.3f})' if name in data.weights else ""
        parts += [f'<h2 id="{_e(name)}">{_e(title)}{weight}</h2>', _class_table(name, data),
                  f'<p class="note">Reliability per class with the diagonal (perfect calibration); the shaded '
                  f"bars show how many predictions fall in each bin (scaled; hollow markers: fewer than {MIN_BIN}). "
                  f"Confusion matrix of the argmax prediction, "
                  f"counts and share of each actual outcome.</p>", fig_section(name, data)]
    parts += ['<h2 id="inputs">What the transformer models saw</h2>', _inputs_html(data),
              '<h2 id="sources">Sources</h2><ul>' +
              "".join(f"<li>{_e(k)}: <code>{_e(v)}</code></li>" for k, v in sources.items()) + "</ul>",
              "</body></html>", ""]
    return "\n".join(parts)
