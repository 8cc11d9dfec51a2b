"""``prefcal demo``: the main job on an embedded, reproducible synthetic data set (SPEC §10).

Each prompt has a true Plackett-Luce model over its responses; one human ordering per prompt is drawn from it.
Three reward models score the responses: the truth itself (calibrated by construction), an over-confident
model (true scores plus noise, times 2.5) and an under-confident one (the same, times 0.4). For each model the
full calibration report runs (sub-2 and sub-3 rank-wise ECE, top-1 and top-2, the whole ordering, the position
marginals), then a temperature is fitted on one half of the prompts and the report of the other half is shown
before and after it. Writes ``report.md``, ``report.json`` and one reliability-diagram PNG per model (with
matplotlib), and prints a summary table.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import numpy as np

from . import __version__, _report, pl, ranking, recalibrate

LEVELS = ("sub2", "sub3", "top1", "top2", "full", "positions")


def make_data(n_prompts: int, n_items: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    truth = rng.normal(scale=1.2, size=(n_prompts, n_items))
    human = np.asarray(pl.sample(truth, seed=seed + 1))[:, 0]
    noisy = truth + rng.normal(scale=0.5, size=truth.shape)
    models = {"true model": truth, "over-confident": 2.5 * noisy, "under-confident": 0.4 * noisy}
    return {"rankings": human, "models": models}


def run(
    out: str = "prefcal-demo", n_prompts: int = 20_000, n_items: int = 6, seed: int = 0, echo: Any = print
) -> dict[str, Any]:
    """Runs the demo, writes its files into ``out`` and returns report.json's content."""
    os.makedirs(out, exist_ok=True)
    t0 = time.perf_counter()
    data = make_data(n_prompts, n_items, seed)
    obs = data["rankings"]
    half = n_prompts // 2
    levels: dict[str, Any] = {}
    summary = []
    pictures = []
    held_levels = ("sub2", "top1", "full")
    for name, scores in data["models"].items():
        rep = ranking.report(scores, obs)
        key = name.replace(" ", "_")
        try:
            beta: float | None = recalibrate.temperature(scores[:half], obs[:half])
        except ValueError as exc:  # a handful of prompts can leave no best temperature
            beta, temp = None, {"beta": None, "error": str(exc)}
            before = after = None
        else:
            before = ranking.report(scores[half:], obs[half:], levels=held_levels)
            after = ranking.report(scores[half:] * beta, obs[half:], levels=held_levels)
            temp = {
                "beta": beta,
                "held_out_before": {lv: r.ece for lv, r in before.levels.items()},
                "held_out_after": {lv: r.ece for lv, r in after.levels.items()},
            }
        # each model's block has the layout of prefcal evaluate's report.json (levels by name)
        levels[key] = {"levels": {lv: r.to_dict() for lv, r in rep.levels.items()}, "temperature": temp}
        png = os.path.join(out, f"reliability_{key}.png")
        if _report.figure(f"prefcal demo: {name}", rep.levels, png):
            pictures.append(png)
        summary.append((name, {lv: r.ece for lv, r in rep.levels.items()}, beta, before, after))
    doc = {
        "prefcal": __version__,
        "input": {"demo": True, "prompts": n_prompts, "items": n_items, "seed": seed},
        "models": levels,
    }
    shown = tuple(lv for lv in LEVELS if lv in summary[0][1])  # sub3 needs 3 items, top2 3
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump(doc, f, indent=1, default=float)
    lines = [
        "# prefcal demo",
        "",
        f"{n_prompts} prompts with {n_items} responses each; one human ordering per prompt drawn from the "
        "true Plackett-Luce model. ECE per level (sub-k, top-k: rank-wise classwise ECE; full: top-label; "
        "positions: the position marginals as binary events).",
        "",
        "| model | " + " | ".join(shown) + " | temperature β | held-out top-1 ECE before → after |",
        "|---" * (len(shown) + 3) + "|",
    ]
    for name, eces, beta, before, after in summary:
        cells = " | ".join(f"{eces[lv]:.4f}" for lv in shown)
        lines.append(f"| {name} | {cells} | {_beta_cells(beta, before, after, ' | ', ' → ')} |")
    lines += [
        "",
        "Reliability diagrams: " + ", ".join(os.path.basename(p) for p in pictures)
        if pictures
        else "(install matplotlib for the reliability diagrams: pip install 'prefcal[plot]')",
    ]
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    echo(f"prefcal demo: {n_prompts} prompts x {n_items} responses, seed {seed}")
    width = max(len(s[0]) for s in summary)
    echo(f"{'model':{width}s}  " + "  ".join(f"{lv:>9s}" for lv in shown) + "   beta    top1 ECE held out")
    for name, eces, beta, before, after in summary:
        echo(
            f"{name:{width}s}  "
            + "  ".join(f"{eces[lv]:9.4f}" for lv in shown)
            + "  "
            + _beta_cells(beta, before, after, "  ", " -> ")
        )
    echo(
        f"wrote {out}/report.md, {out}/report.json"
        + (f" and {len(pictures)} PNGs" if pictures else " (no PNGs: matplotlib is not installed)")
        + f" in {time.perf_counter() - t0:.1f} s"
    )
    return doc


def _beta_cells(beta: float | None, before: Any, after: Any, sep: str, arrow: str) -> str:
    """The temperature and the held-out top-1 ECE before and after it, or why there is none."""
    if beta is None:
        return f"{'none':>6s}{sep}(no best temperature on these prompts)"
    return f"{beta:6.3f}{sep}{before.levels['top1'].ece:.4f}{arrow}{after.levels['top1'].ece:.4f}"
