"""The reports: one JSON file and one Markdown file per run, both written atomically.

The JSON (:func:`write_results`) holds the environment, the settings, the structural
problems (:func:`benchmarks.harness.records.check_results`) and per benchmark every
measurement and fitted exponent; the Markdown (:func:`render_markdown`) the same tables
with a summary of every subject's speed-up over its baselines and ratio to its floors.
Both go through :mod:`stepwise_ntk._io`, so a reader sees a whole report or the previous one.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.harness.records import SCHEMA_VERSION, BenchmarkResult, check_results, jsonable
from stepwise_ntk._io import write_json, write_text

__all__ = ["format_bytes", "format_seconds", "render_markdown", "write_results"]


def format_seconds(s: float | None) -> str:
    if s is None:
        return "—"
    if s < 1e-3:
        return f"{s * 1e6:.0f} µs"
    if s < 1:
        return f"{s * 1e3:.1f} ms"
    return f"{s:.2f} s"


def format_bytes(b: int | None) -> str:
    if b is None:
        return "—"
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if b >= scale:
            return f"{b / scale:.1f} {unit}"
    return f"{b} B"


def _format_extra(extra: dict[str, Any]) -> str:
    parts = []
    for k, v in extra.items():
        if isinstance(v, float):
            parts.append(f"{k}={v:.3g}")
        elif isinstance(v, (int, bool, str)) and len(str(v)) <= 40:
            parts.append(f"{k}={v}")
    return ", ".join(parts)


def _sizes_str(sizes: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in sizes.items())


def render_markdown(
    env: dict[str, Any], settings: dict[str, Any], results: Sequence[BenchmarkResult]
) -> str:
    """The Markdown report: environment, then per benchmark a table and its fits."""
    lines = [
        "# stepwise_ntk benchmarks",
        "",
        f"`{env['command']}` — {env['timestamp_utc']}, commit {str(env.get('git_commit'))[:10]}"
        f"{' (dirty)' if env.get('git_dirty') else ''}",
        "",
        f"- backend **{env['backend']}** ({env['device_kind']}, {env['n_local_devices']} local device(s), "
        f"{env['process_count']} process(es)); {env['cpu_count']} CPU cores; {env['platform']}",
        f"- jax {env['jax']}, jaxlib {env['jaxlib']}, neural-tangents {env['neural_tangents']}, "
        f"flax {env['flax']}, optax {env['optax']}, numpy {env['numpy']}, python {env['python']}",
        f"- size `{settings['size']}`, repeats ≤ {settings['repeats']} (budget {settings['budget_s']} s per "
        f"measurement), dtype {settings['dtype'] or 'default (float64 on CPU, float32 on accelerators)'}; "
        f"load average at start {_fmt_load(env.get('loadavg'))}; XLA_FLAGS=`{env.get('XLA_FLAGS', '')}`; "
        f"OPENBLAS_NUM_THREADS={env.get('OPENBLAS_NUM_THREADS') or 'unset'}",
        "",
        "Times are medians of the timed calls with compilation excluded (`compile` column); "
        "`speed-up` is baseline time / subject time, `× floor` is subject time / floor time. "
        "Peak memory: see `benchmarks/harness/memory.py`.",
        "",
    ]
    lines += _summary(results)
    if settings.get("pending"):
        lines += [f"**Incomplete run**: not yet run: {', '.join(settings['pending'])}.", ""]
    for r in results:
        lines += [f"## {r.name}", "", r.description, ""]
        lines.append(
            f"status **{r.status}**{': ' + r.message if r.message else ''}; wall {r.wall_s:.0f} s; "
            f"load {_fmt_load(r.loadavg_before)} → {_fmt_load(r.loadavg_after)}"
        )
        lines.append("")
        if r.measurements:
            lines += [
                "| case | name | role | median | IQR | min | n | compile | peak mem "
                "| speed-up vs baselines | × floor | notes |",
                "|---|---|---|---:|---:|---:|---:|---:|---:|---|---|---|",
            ]
            for m in r.measurements:
                ref = {
                    b.name: b
                    for b in r.measurements
                    if b.case == m.case and b.role in ("baseline", "floor")
                }
                speed, floor = [], []
                for b in m.baselines:
                    if b in ref and m.median_s > 0:
                        if ref[b].role == "baseline":
                            speed.append(f"{ref[b].median_s / m.median_s:.2f}× {b}")
                        else:
                            floor.append(f"{m.median_s / ref[b].median_s:.2f}× {b}")
                lines.append(
                    f"| {m.case} | {m.name} | {m.role} | {format_seconds(m.median_s)} "
                    f"| {format_seconds(m.iqr_s)} | {format_seconds(m.min_s)} | {m.repeats} "
                    f"| {format_seconds(m.compile_s)} | {format_bytes(m.peak_bytes)} | "
                    f"{'; '.join(speed)} | {'; '.join(floor)} | {_format_extra(m.extra)} |"
                )
            lines.append("")
        if r.fits:
            lines += [
                "| fitted | quantity | vs | exponent | expected | R² | points |",
                "|---|---|---|---:|---:|---:|---|",
            ]
            for f in r.fits:
                exp = (
                    "—"
                    if f.expected is None
                    else f"{f.expected:g} ± {f.tolerance:g}"
                    + (" ✓" if f.within_tolerance else " ✗")
                )
                pts = ", ".join(f"{x:g}" for x, _ in f.points)
                lines.append(
                    f"| {f.name} | {f.quantity} | {f.variable} | {f.exponent:.2f} | {exp} | {f.r2:.3f} | "
                    f"{pts} |"
                )
            lines.append("")
    return "\n".join(lines) + "\n"


def _summary(results: Sequence[BenchmarkResult]) -> list[str]:
    """One row per subject: its time, speed-up over each baseline, ratio to each floor."""
    rows = []
    for r in results:
        for m in r.measurements:
            if m.role != "subject":
                continue
            ref = {b.name: b for b in r.measurements if b.case == m.case and b.role != "subject"}
            speed = [
                f"{ref[b].median_s / m.median_s:.1f}× {b}"
                for b in m.baselines
                if b in ref and ref[b].role == "baseline" and m.median_s > 0
            ]
            floor = [
                f"{m.median_s / ref[b].median_s:.2f}× {b}"
                for b in m.baselines
                if b in ref and ref[b].role == "floor" and ref[b].median_s > 0
            ]
            err = m.extra.get("max_abs_err")
            acc = "" if not isinstance(err, (int, float)) else f"{err:.1e}"
            rows.append(
                f"| {r.name} | {m.case} | {m.name} | {format_seconds(m.median_s)} | "
                f"{'; '.join(speed)} | {'; '.join(floor)} | {acc} |"
            )
    if not rows:
        return []
    return [
        "## Summary",
        "",
        "| benchmark | case | subject | median | speed-up vs baselines | × floor | max abs err |",
        "|---|---|---|---:|---|---|---|",
        *rows,
        "",
    ]


def _fmt_load(load: Sequence[float] | None) -> str:
    return "—" if not load else "/".join(f"{v:.1f}" for v in load)


def write_results(
    out_dir: str | os.PathLike,
    tag: str,
    env: dict[str, Any],
    settings: dict[str, Any],
    results: Sequence[BenchmarkResult],
) -> tuple[Path, Path]:
    """Write ``<out_dir>/<tag>.json`` and ``<tag>.md`` atomically; returns both paths."""
    out = Path(out_dir)
    payload = {
        "schema": SCHEMA_VERSION,
        "environment": env,
        "settings": settings,
        "problems": check_results(results),
        "benchmarks": {r.name: r.to_json() for r in results},
    }
    json_path, md_path = out / f"{tag}.json", out / f"{tag}.md"
    write_json(json_path, jsonable(payload), indent=1)
    write_text(md_path, render_markdown(env, settings, results))
    return json_path, md_path
