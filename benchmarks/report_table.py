"""The short tables of a gpu_engine.py report; no heavy imports, so it prints in a second.

python benchmarks/report_table.py report.json
"""

from __future__ import annotations

import json
import sys
from typing import Any


def table(data: dict[str, Any]) -> str:
    """The short summary printed last: stock against the lossless engine, then each variant."""
    lines = [f"device: {data['device']}  steps: {data['steps']}  levers: {data.get('levers')}"]
    header = ("size", "stock s/step", "engine s/step", "stock@50", "engine@50", "speedup")
    header += ("latents err", "(tolerance)", "pixels err", "(tolerance)")
    lines.append(" ".join(f"{h:>13}" for h in header))
    for row in data["rows"]:
        s, e = row.get("stock", {}), row.get("engine", {})
        cells = (
            row["size"],
            s.get("median_step_s"),
            e.get("median_step_s"),
            s.get("extrapolated_50_steps_s"),
            e.get("extrapolated_50_steps_s"),
            row.get("speedup"),
            row.get("latents_rel_error"),
            row.get("tolerance", {}).get("latents"),
            row.get("pixels_rel_error"),
            row.get("tolerance", {}).get("pixels"),
        )
        lines.append(" ".join(f"{fmt(c):>13}" for c in cells))
    if "edit" in data:
        lines.append(edit_line(data["edit"]))
    lines.extend(variant_lines(data.get("variants", [])))
    for row in data["throughput"]:
        s, e = row.get("stock", {}), row.get("engine", {})
        lines.append(
            f"throughput {row['size']} b{row['batch']}: images/s at 50 steps "
            f"stock {fmt(s.get('images_per_s_at_50_steps'))} engine "
            f"{fmt(e.get('images_per_s_at_50_steps'))}"
        )
    for row in data.get("queue", []):
        lines.append(
            f"queue {row['size']} batch<={row['batch_max_images']}: {row['jobs']} jobs in "
            f"{row['pipeline_calls']} calls, images/s {fmt(row['images_per_s'])} "
            f"(x{fmt(row.get('speedup_vs_batch_1'))}), busy {fmt(row['engine_busy_fraction'])}, "
            f"nvml {fmt(row['gpu_utilisation_nvml'])}, pixels vs batch 1 "
            f"{fmt(row.get('pixels_vs_batch_1'))} ok {row.get('match')}"
        )
    if "startup_warmup" in data:
        lines.append(f"start-up warm-up: {data['startup_warmup']}")
    lines.append(
        f"outputs_match: {data['outputs_match']}  complete: {data['complete']}  "
        f"errors: {[e['section'] for e in data['errors']]}  skipped: {data['skipped']}"
    )
    return "\n".join(lines)


def edit_line(edit: dict[str, Any]) -> str:
    """The edit row: stock QwenImageEditPlusPipeline against the EditEngine."""
    s, e = edit.get("stock", {}), edit.get("engine", {})
    tolerance = edit.get("tolerance", {})
    return (
        f"edit {edit['size']} from {'+'.join(edit['pictures'])} ({edit['image_tokens']} image "
        f"tokens): s/step stock {fmt(s.get('median_step_s'))} engine "
        f"{fmt(e.get('median_step_s'))}, @50 stock {fmt(s.get('extrapolated_50_steps_s'))} "
        f"engine {fmt(e.get('extrapolated_50_steps_s'))}, speedup {fmt(edit.get('speedup'))}, "
        f"latents err {fmt(edit.get('latents_rel_error'))} ({fmt(tolerance.get('latents'))}), "
        f"pixels err {fmt(edit.get('pixels_rel_error'))} ({fmt(tolerance.get('pixels'))}), "
        f"ok {edit.get('match')}"
    )


def variant_lines(variants: list[dict[str, Any]]) -> list[str]:
    """One line per variant and size. Errors are against stock's output for lossless
    variants (`ok`: within tolerance), against the lossless variant's for fast modes."""
    if not variants:
        return []
    header = ("variant", "size", "s/step", "@50 s", "x stock", "x lossless")
    header += ("latents err", "pixels err", "err vs", "skipped", "ok", "warm-up s")
    lines = [" ".join(f"{h:>14}" for h in header)]
    for entry in variants:
        warmup = entry.get("startup_warmup", {}).get("seconds")
        if not entry["rows"]:
            lines.append(f"{entry['name']:>14} (no rows; levers {entry.get('levers')})")
        for row in entry["rows"]:
            fast = not entry["lossless"] and "vs_lossless" in row
            against = "lossless" if fast else "stock"
            errors = row.get(f"vs_{against}", {})
            cells = (
                entry["name"],
                row["size"],
                row.get("median_step_s"),
                row.get("extrapolated_50_steps_s"),
                row.get("vs_stock", {}).get("speedup"),
                row.get("vs_lossless", {}).get("speedup"),
                errors.get("latents"),
                errors.get("pixels"),
                against,
                row.get("step_cache", {}).get("skipped_fraction"),
                row.get("match"),
                warmup,
            )
            lines.append(" ".join(f"{fmt(c):>14}" for c in cells))
        for row in entry["rows"]:
            if "probe" in row:
                lines.append(f"probe {entry['name']} {row['size']}: {row['probe']}")
            if "profile" in row:
                lines.append(f"profile {entry['name']} {row['size']}: {split(row['profile'])}")
    return lines


def split(profile: dict[str, Any]) -> str:
    """One forward's time by kind of kernel: seconds, share, TFLOP/s where counted."""
    parts = []
    for kind, part in profile["kinds"].items():
        rate = f", {part['tflops']} TFLOP/s" if part.get("tflops") else ""
        parts.append(f"{kind} {part['s']:.4g} s ({100 * part['share']:.0f} %{rate})")
    kernels = [
        f"{name} {entry['tflops']} TFLOP/s" if "tflops" in entry else f"{name} -"
        for name, entry in profile.get("attention_backends", {}).items()
    ]
    line = f"{profile['total_s']:.4g} s on {profile['timed_on']}"
    if "wall_s" in profile:
        line += f" of {profile['wall_s']:.4g} s wall (busy {profile['busy_fraction']})"
    line += ": " + "; ".join(parts)
    return line + (f" | attention alone: {', '.join(kernels)}" if kernels else "")


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


if __name__ == "__main__":
    try:
        with open(sys.argv[1]) as report:
            print(table(json.load(report)))
    except (OSError, ValueError) as exc:
        print(f"no report: {exc}")
