"""Results -> results.csv, a Markdown table (widths x resolutions) and the latency/MACs plot."""

from __future__ import annotations

import csv
from pathlib import Path

from deploy.results import BenchmarkResult

CSV_FIELDS = ["name", "target", "device", "width", "resolution", "dtype", "status", "macs", "params",
              "mean_ms", "median_ms", "p90_ms", "std_ms", "min_ms", "max_ms", "runs", "gmacs_per_second",
              "threads", "warmup_ms", "load_seconds", "model_size_bytes", "library_size_bytes", "emulated", "error"]


def _row(result: BenchmarkResult) -> dict:
    row = {k: v for k, v in result.to_dict().items() if k in CSV_FIELDS}
    if result.latency:
        row.update({k: round(v, 4) if isinstance(v, float) else v for k, v in vars(result.latency).items()})
    return row


def write_csv(results: list[BenchmarkResult], path: Path) -> None:
    with open(path, "w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for result in sorted(results, key=lambda r: (r.dtype or "", r.width or 0, r.resolution or 0)):
            writer.writerow(_row(result))


def markdown(results: list[BenchmarkResult]) -> str:
    """Median latency in ms per variant: widths as rows, resolutions as columns, a table per dtype."""
    if not results:
        return "No results yet.\n"
    lines = []
    emulated = any(r.emulated for r in results)
    targets = sorted({f"{r.target} ({r.device})" for r in results})
    threads = sorted({r.threads for r in results if r.threads})
    lines.append(f"Median latency (ms) on {', '.join(targets)}"
                 + (f", TVM runtime on {'/'.join(map(str, threads))} thread(s)." if threads else "."))
    if emulated:
        lines.append("EMULATED under qemu-user: these timings are NOT device latencies; they show only "
                     "that the code runs and is correct.")
    for dtype in sorted({r.dtype or "model" for r in results}):
        chosen = [r for r in results if (r.dtype or "model") == dtype]
        widths = sorted({r.width for r in chosen if r.width is not None})
        resolutions = sorted({r.resolution for r in chosen if r.resolution is not None})
        lines += ["", f"**{dtype}**", "", "| width \\ res | " + " | ".join(map(str, resolutions)) + " |",
                  "|---|" + "---|" * len(resolutions)]
        for width in widths:
            cells = []
            for res in resolutions:
                match = next((r for r in chosen if r.width == width and r.resolution == res), None)
                cells.append("" if match is None else
                             f"{match.latency.median_ms:.2f}" if match.status == "ok" and match.latency else
                             match.status.upper())
            lines.append(f"| {width:g} | " + " | ".join(cells) + " |")
        others = [r for r in chosen if r.width is None]
        for r in others:
            lines.append(f"| {r.name} | {r.latency.median_ms:.2f} |" if r.latency else f"| {r.name} | {r.status} |")
    failed = [r for r in results if r.status != "ok"]
    if failed:
        lines += ["", "Failed or mismatched:"] + [f"- {r.name}: {r.status}: {r.error}" for r in failed]
    return "\n".join(lines) + "\n"


def plot(results: list[BenchmarkResult], path: Path) -> bool:
    """Latency against MACs, one line per width (and dtype): the paper's trade-off curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    good = [r for r in results if r.status == "ok" and r.latency and r.macs and r.width is not None]
    if not good:
        return False
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for dtype in sorted({r.dtype for r in good}):
        for width in sorted({r.width for r in good if r.dtype == dtype}):
            points = sorted((r.macs / 1e6, r.latency.median_ms) for r in good if r.width == width and r.dtype == dtype)
            axes.plot(*zip(*points), marker="o" if dtype == "float32" else "s",
                      linestyle="-" if dtype == "float32" else "--", label=f"{width:g} {dtype}")
    axes.set_xlabel("multiply-adds (millions)")
    axes.set_ylabel("median latency (ms)")
    title = f"MobileNetV2 on {', '.join(sorted({r.target for r in good}))}"
    if any(r.emulated for r in good):
        title += " (EMULATED: not device latency)"
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.legend(title="width", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def write_all(results: list[BenchmarkResult], out: Path) -> str:
    """results.csv, report.md and latency_vs_macs.png in out/; returns the Markdown."""
    out.mkdir(parents=True, exist_ok=True)
    write_csv(results, out / "results.csv")
    text = markdown(results)
    (out / "report.md").write_text(text)
    plot(results, out / "latency_vs_macs.png")
    return text
