"""Results -> results.csv, a Markdown table (widths x resolutions) and the latency/MACs plot."""

from __future__ import annotations

import csv
from pathlib import Path

from mnv2_edge.deploy.results import BenchmarkResult

CSV_FIELDS = ["name", "target", "device", "width", "resolution", "dtype", "status", "macs", "params",
              "mean_ms", "median_ms", "p10_ms", "p90_ms", "std_ms", "min_ms", "max_ms", "runs", "gmacs_per_second",
              "threads", "litert_median_ms", "litert_p10_ms", "vs_litert", "litert_note", "warmup_ms", "load_seconds",
              "model_size_bytes", "library_size_bytes", "emulated", "board", "retried", "error"]


def _row(result: BenchmarkResult) -> dict:
    row = {k: v for k, v in result.to_dict().items() if k in CSV_FIELDS}
    row["retried"] = " | ".join(result.retried)
    if result.litert:
        row["litert_median_ms"], row["vs_litert"] = round(result.litert.median_ms, 4), round(result.vs_litert, 3)
        row["litert_p10_ms"] = result.litert.p10_ms and round(result.litert.p10_ms, 4)
    if result.latency:
        row.update({k: round(v, 4) if isinstance(v, float) else v for k, v in vars(result.latency).items()})
    return row


def write_csv(results: list[BenchmarkResult], path: Path) -> None:
    with open(path, "w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for result in sorted(results, key=lambda r: (r.dtype or "", r.width or 0, r.resolution or 0)):
            writer.writerow(_row(result))


def _cell(match: BenchmarkResult | None) -> str:
    """ours ms, and LiteRT's on the same device with the ratio where it was timed."""
    if match is None:
        return ""
    if match.status != "ok" or not match.latency:
        return match.status.upper()
    text = f"{match.latency.median_ms:.2f}"
    return text + (f" / {match.litert.median_ms:.2f} ({match.vs_litert:.2f}x)" if match.litert else "")


def markdown(results: list[BenchmarkResult]) -> str:
    """Median latency in ms per variant: widths as rows, resolutions as columns, a table per dtype;
    where LiteRT was timed on the device too, each cell is `ours / LiteRT (ours / LiteRT)`."""
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
    if any(r.litert for r in results):
        lines.append("Cells: ours / LiteRT on the same device, file, inputs and threads (ours / LiteRT; "
                     "below 1x is faster than LiteRT).")
    notes = sorted({r.litert_note for r in results if r.latency and not r.litert and r.litert_note})
    if notes:
        lines.append("LiteRT not timed on the device: " + "; ".join(notes) + ".")
    for dtype in sorted({r.dtype or "model" for r in results}):
        chosen = [r for r in results if (r.dtype or "model") == dtype]
        widths = sorted({r.width for r in chosen if r.width is not None})
        resolutions = sorted({r.resolution for r in chosen if r.resolution is not None})
        lines += ["", f"**{dtype}**", "", "| width \\ res | " + " | ".join(map(str, resolutions)) + " |",
                  "|---|" + "---|" * len(resolutions)]
        for width in widths:
            cells = []
            for res in resolutions:
                cells.append(_cell(next((r for r in chosen if r.width == width and r.resolution == res), None)))
            lines.append(f"| {width:g} | " + " | ".join(cells) + " |")
        for r in (r for r in chosen if r.width is None):
            lines.append(f"| {r.name} | {_cell(r)} |")
    boards = sorted({r.board for r in results if r.board})
    if len(boards) > 1:  # a farm: which board measured what (the boards of one key are meant to be alike)
        lines += ["", f"Measured on {len(boards)} boards:", "", "| board | models | median ms of each |", "|---|---|---|"]
        for board in boards:
            mine = sorted((r for r in results if r.board == board), key=lambda r: r.name)
            lines.append(f"| {board} | {len(mine)} | " + ", ".join(
                f"{r.name} {r.latency.median_ms:.2f}" if r.latency else f"{r.name} {r.status}" for r in mine) + " |")
    moved = [r for r in results if r.retried]
    if moved:
        lines += ["", "Measured again on another board after a failure:"] + [
            f"- {r.name} (on {r.board}): " + "; ".join(r.retried) for r in moved]
    estimated = [r for r in results if r.estimate]
    if estimated:
        cores = sorted({f"{r.estimate['core']} at {r.estimate['clock_ghz']:g} GHz" for r in estimated})
        lines += ["", f"ESTIMATED on a simulated {', '.join(cores)}, one thread (ms, ours / LiteRT): "
                  f"{estimated[0].estimate['note']}.", "", "| model | ours | LiteRT | ours / LiteRT |", "|---|---:|---:|---:|"]
        lines += [f"| {r.name} | {r.estimate['ours_ms']:.2f} | {r.estimate['litert_ms']:.2f} | {r.estimate['ratio']:.2f}x |"
                  for r in sorted(estimated, key=lambda r: r.name)]
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
            line = axes.plot(*zip(*points), marker="o" if dtype == "float32" else "s",
                             linestyle="-" if dtype == "float32" else "--", label=f"{width:g} {dtype}")[0]
            theirs = sorted((r.macs / 1e6, r.litert.median_ms) for r in good
                            if r.width == width and r.dtype == dtype and r.litert)
            if theirs:  # LiteRT on the same device: the same colour, hollow markers, dotted
                axes.plot(*zip(*theirs), marker="o" if dtype == "float32" else "s", linestyle=":",
                          color=line.get_color(), markerfacecolor="none", label=f"{width:g} {dtype} LiteRT")
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
