#!/usr/bin/env python3
"""Turns the JSON files of bench/compare.sh into the BENCHMARKS.md table."""

import datetime
import glob
import json
import os
import platform
import statistics
import subprocess
import sys

FLOP_CASES = {"encoder"}


def load(folder, tool):
    """The results of `tool` (samtune, samtune_bf16, pytorch, pytorch-fast) by case, one per
    round."""
    runs = {}
    meta = {}
    for path in sorted(glob.glob(os.path.join(folder, f"{tool}-*.json"))):
        doc = json.load(open(path))
        if doc.get("tool", "samtune") != tool:
            continue  # pytorch-*.json also matches pytorch-fast-*.json
        meta = doc
        # compare.sh's GPU memory sample for this file's case, if it ran on a GPU
        gpu = path + ".gpu-mb"
        for r in doc["results"]:
            if os.path.exists(gpu):
                r["peak_gpu_mb"] = float(open(gpu).read().strip() or "nan")
            runs.setdefault(r["case"], []).append(r)
    return runs, meta


def median_of(results, key="median_s"):
    return statistics.median(r[key] for r in results)


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def hardware_peaks(folder):
    """The CPU's measured peaks from compare.sh's run of bench/peak.sh: {"fp32": GFLOP/s,
    "bf16": GFLOP/s, "bf16 engine": "AMX" or "vdpbf16ps"}, what it measured of them."""
    peaks = {}
    try:
        lines = open(os.path.join(folder, "peak.txt")).read().splitlines()
    except OSError:
        return peaks
    for line in lines:
        label, _, rest = line.partition(":")
        try:
            value = float(rest.split()[0])
        except (IndexError, ValueError):
            continue
        if label.startswith("fp32 FMA peak"):
            peaks["fp32"] = max(peaks.get("fp32", 0.0), value)
        elif label.startswith("bf16 AMX tile-product peak"):
            peaks["bf16"], peaks["bf16 engine"] = value, "AMX"  # samtune's bf16 runs on AMX where there is AMX
        elif label.startswith("bf16 pair-product peak") and peaks.get("bf16 engine") != "AMX":
            peaks["bf16"], peaks["bf16 engine"] = value, "vdpbf16ps"
    return peaks


def gpu_model():
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, check=True).stdout
        name, driver = out.strip().splitlines()[0].rsplit(",", 1)
        return f"{name.strip()} (driver {driver.strip()})"
    except (OSError, subprocess.CalledProcessError, IndexError, ValueError):
        return "unknown GPU"


def main():
    folder = sys.argv[1]
    ours, ours_meta = load(folder, "samtune")
    ref, ref_meta = load(folder, "pytorch")
    peak = ref_meta.get("gemm_peak_gflops")
    hardware = hardware_peaks(folder)
    device = ref_meta.get("device", "cpu")
    on_gpu = device != "cpu"
    try:
        rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
    except OSError:
        rustc = "a prebuilt binary (no rustc here)"
    machine = (f"{gpu_model()} with {cpu_model()}" if on_gpu else
               f"{cpu_model()}, {os.cpu_count()} logical CPUs, {ref_meta.get('threads')} threads for both")
    print("# Benchmarks: samtune vs the official PyTorch implementation\n")
    print(f"Measured {datetime.date.today()} by `bench/compare.sh` on {machine}; "
          f"variant {ref_meta.get('variant')}; fp32; torch {ref_meta.get('torch')}, {rustc}, burn 0.22.1 (`{'flex' if device == 'cpu' else device}`).")
    print("Medians over rounds of the per-round medians; the two tools alternate case by case. "
          "Ratio = samtune / PyTorch time (below 1: samtune is faster).", end=" ")
    if peak:
        print(f"GEMM rate = PyTorch's sustained fp32 GEMM rate here ({peak:.0f} GFLOP/s).", end=" ")
    if hardware:
        bf16 = (f", bf16 {hardware['bf16']:.0f} GFLOP/s ({hardware['bf16 engine']}, the bf16 rows' peak)"
                if "bf16" in hardware else "")
        print(f"Hardware peak = the CPU's own, measured by bench/peak.sh on the same threads: "
              f"fp32 FMA {hardware['fp32']:.0f} GFLOP/s{bf16}.", end="")
    print("\n")
    memory_key = "peak_gpu_mb" if on_gpu else "peak_rss_mb"
    memory_label = "peak GPU MB (nvidia-smi)" if on_gpu else "peak MB"
    fast, _ = load(folder, "pytorch-fast")
    if fast:
        print("PyTorch fast = the second peer, the same model as a skilled user speeds it up "
              "(bench/fast_peer.py); what each case ran:\n")
        for case, rs in fast.items():
            print(f"- {case}: {rs[0].get('mode', '')}")
        print()
    print(f"| case | samtune s | PyTorch s | ratio | PyTorch fast s | ratio to fast | FLOP | samtune % of GEMM rate | "
          f"PyTorch % of GEMM rate | samtune % of hardware peak | {memory_label} samtune / PyTorch / fast |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    bf16, _ = load(folder, "samtune_bf16")
    rows = [(case, results, ours) for case, results in ours.items()]
    rows += [(f"{case} (samtune bf16)", results, bf16) for case, results in bf16.items()]
    for label, results, side in rows:
        case = results[0]["case"]
        mine = median_of(results)
        flops = results[0].get("flops")
        pct = lambda t, of: f"{flops / t / 1e9 / of * 100:.0f}%" if flops and of and t == t else "-"
        own_peak = hardware.get("bf16" if side is bf16 else "fp32")
        peak_mb = lambda rs: f"{max(r.get(memory_key, float('nan')) for r in rs):.0f}" if rs else "-"
        cells = [f"{label}: {results[0]['description']}", timed(results)]
        for peer in (ref, fast):
            theirs = median_of(peer[case]) if case in peer else float("nan")
            cells += [timed(peer.get(case, [])), f"{mine / theirs:.2f}" if theirs == theirs else "-"]
        theirs = median_of(ref[case]) if case in ref else float("nan")
        cells += [f"{flops / 1e9:.0f} G" if flops else "-", pct(mine, peak), pct(theirs, peak), pct(mine, own_peak),
                  " / ".join(peak_mb(rs) for rs in (results, ref.get(case, []), fast.get(case, [])))]
        print("| " + " | ".join(cells) + " |")
        keys = dict.fromkeys(list(results[0].get("extra", {})) + [k for rs in (ref, fast) for r in rs.get(case, []) for k in r["extra"]])
        for key in keys:
            row = [f"&nbsp;&nbsp;{key}"]
            values = [extra_of(rs.get(case, []), key) for rs in (side, ref, fast)]
            row += [values[0], values[1], ratio(values[0], values[1]), values[2], ratio(values[0], values[2])]
            print("| " + " | ".join(row) + " | | | | | |")


def timed(results):
    """The median over rounds of the per-round medians, with their range (seconds)."""
    if not results:
        return "-"
    rounds = sorted(r["median_s"] for r in results)
    text = f"{statistics.median(rounds):.3f}"
    return text if len(rounds) == 1 else f"{text} ({rounds[0]:.3g}-{rounds[-1]:.3g})"


def extra_of(results, key):
    values = [r["extra"][key] for r in results if key in r.get("extra", {})]
    if not values:
        return "-"
    value = statistics.median(values)
    return f"{value:.2e}" if value < 1e-2 else f"{value:.3f}"


def ratio(a, b):
    try:
        return f"{float(a) / float(b):.2f}"
    except (ValueError, ZeroDivisionError):
        return "-"


if __name__ == "__main__":
    main()
