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
    runs = {}
    meta = {}
    for path in sorted(glob.glob(os.path.join(folder, f"{tool}-*.json"))):
        doc = json.load(open(path))
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
    print(f"Medians over rounds of the per-round medians; the two tools alternate case by case. "
          f"Ratio = samtune / PyTorch time (below 1: samtune is faster). Machine peak = PyTorch's "
          f"sustained fp32 GEMM rate here ({peak:.0f} GFLOP/s).\n" if peak else "\n")
    memory_key = "peak_gpu_mb" if on_gpu else "peak_rss_mb"
    memory_label = "peak GPU MB (nvidia-smi)" if on_gpu else "peak MB"
    print(f"| case | samtune s | PyTorch s | ratio | FLOP | samtune % of peak | PyTorch % of peak | {memory_label} samtune / PyTorch |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for case, results in ours.items():
        mine = median_of(results)
        theirs = median_of(ref[case]) if case in ref else float("nan")
        flops = results[0].get("flops")
        pct = lambda t: f"{flops / t / 1e9 / peak * 100:.0f}%" if flops and peak else "-"
        peak_mb = lambda rs: max(r.get(memory_key, float("nan")) for r in rs)
        mem = f"{peak_mb(results):.0f} / {peak_mb(ref.get(case, [{}])):.0f}"
        print(f"| {case}: {results[0]['description']} | {mine:.3f} | {theirs:.3f} | {mine / theirs:.2f} | "
              f"{flops / 1e9:.0f} G | {pct(mine)} | {pct(theirs)} | {mem} |" if flops else
              f"| {case}: {results[0]['description']} | {mine:.3f} | {theirs:.3f} | {mine / theirs:.2f} | - | - | - | {mem} |")
        for key in results[0].get("extra", {}):
            a = statistics.median(r["extra"][key] for r in results)
            b = statistics.median(r["extra"][key] for r in ref.get(case, [])) if case in ref and key in ref[case][0]["extra"] else float("nan")
            print(f"| &nbsp;&nbsp;{key} | {a:.3f} | {b:.3f} | {a / b:.2f} | | | | |")


if __name__ == "__main__":
    main()
