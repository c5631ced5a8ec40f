#!/usr/bin/env python3
"""Render a soak CSV (scripts/soak.sh) as an SVG and print the summary: RSS growth after warm-up.

Standard library only. Usage: soak_plot.py SOAK.csv [--warmup 300] [--out SOAK.svg]
"""
from __future__ import annotations

import argparse
import csv
import statistics
from pathlib import Path

SERIES = [("rss_kb", "RSS (MiB)", 1 / 1024), ("rss_anon_kb", "anonymous RSS (MiB): heap, stacks, C", 1 / 1024),
          ("goroutines", "goroutines", 1.0),
          ("open_files", "open files", 1.0), ("store_bytes", "store (MiB)", 1 / 2**20)]


def load(path: Path) -> list[dict[str, float]]:
    rows = []
    with path.open() as f:
        for r in csv.DictReader(f):
            try:
                rows.append({k: float(v) for k, v in r.items() if v not in ("", None)})
            except ValueError:
                continue
    return [r for r in rows if "t_s" in r and "rss_kb" in r]


def growth(rows: list[dict[str, float]], warmup: float, key: str = "rss_kb") -> tuple[float, float, float]:
    """Growth of key after warm-up: median of the first 5 minutes after warm-up vs median of the last 5."""
    rows = [r for r in rows if key in r]
    after = [r for r in rows if r["t_s"] >= warmup]
    if len(after) < 4:
        return float("nan"), float("nan"), float("nan")
    t0, t1 = after[0]["t_s"], after[-1]["t_s"]
    win = min(300.0, (t1 - t0) / 3)
    first = statistics.median(r[key] for r in after if r["t_s"] <= t0 + win)
    last = statistics.median(r[key] for r in after if r["t_s"] >= t1 - win)
    return first, last, 100 * (last - first) / first


def panel(rows, key, label, scale, x0, y0, w, h, tmax) -> str:
    pts = [(r["t_s"], r[key] * scale) for r in rows if key in r]
    out = [f'<rect x="{x0}" y="{y0}" width="{w}" height="{h}" fill="none" stroke="#999"/>',
           f'<text x="{x0}" y="{y0 - 6}" font-size="13">{label}</text>']
    if not pts:
        return "\n".join(out)
    lo, hi = min(p[1] for p in pts), max(p[1] for p in pts)
    if hi - lo < 1e-9:
        lo, hi = lo - 1, hi + 1
    pad = (hi - lo) * 0.1
    lo, hi = lo - pad, hi + pad
    xy = " ".join(f"{x0 + w * t / max(tmax, 1):.1f},{y0 + h - h * (v - lo) / (hi - lo):.1f}" for t, v in pts)
    out.append(f'<polyline points="{xy}" fill="none" stroke="#1f77b4" stroke-width="1.5"/>')
    out.append(f'<text x="{x0 - 4}" y="{y0 + 10}" font-size="10" text-anchor="end">{hi:.1f}</text>')
    out.append(f'<text x="{x0 - 4}" y="{y0 + h}" font-size="10" text-anchor="end">{lo:.1f}</text>')
    out.append(f'<text x="{x0 + w}" y="{y0 + h + 14}" font-size="10" text-anchor="end">{tmax / 60:.0f} min</text>')
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("csv", type=Path)
    ap.add_argument("--warmup", type=float, default=300)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    rows = load(a.csv)
    out = a.out or a.csv.with_suffix(".svg")
    tmax = rows[-1]["t_s"] if rows else 1
    w, h, gap = 700, 130, 50
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w + 120}" height="{len(SERIES) * (h + gap) + 40}" '
             'font-family="sans-serif">']
    for i, (key, label, scale) in enumerate(SERIES):
        parts.append(panel(rows, key, label, scale, 80, 40 + i * (h + gap), w, h, tmax))
    parts.append("</svg>")
    out.write_text("\n".join(parts))
    first, last, pct = growth(rows, a.warmup)
    afirst, alast, apct = growth(rows, a.warmup, "rss_anon_kb")
    scored = rows[-1].get("scored", float("nan")) if rows else float("nan")
    store = rows[-1].get("store_bytes", float("nan")) / 2**20 if rows else float("nan")
    print(f"soak: {len(rows)} samples over {tmax / 60:.1f} min, {scored:.0f} frames scored, store {store:.1f} MiB; "
          f"after {a.warmup:.0f}s warm-up RSS {first / 1024:.1f} -> {last / 1024:.1f} MiB ({pct:+.2f}%), "
          f"anonymous RSS {afirst / 1024:.1f} -> {alast / 1024:.1f} MiB ({apct:+.2f}%); plot {out}")


if __name__ == "__main__":
    main()
