"""Evaluation at gallery scale: CMC / mAP / mINP of 10,000 queries against 100,000 gallery
images at PAN's embedding size (512 + 14 x 256 = 4,096), scored in query blocks, against
the matrix product alone (the floor) and against ranking the whole distance matrix at once.

    python -m benchmarks.bench_eval_scale                       # the issue's size, all three cases
    python -m benchmarks.bench_eval_scale --queries 2000 --gallery 20000 --cases blocks whole
    python -m benchmarks.bench_eval_scale --metric cosine       # the distances' other gallery preparation

Each case runs in a fresh interpreter on the same features (random, with planted matches:
every query is a noisy copy of a gallery image of its identity seen by another camera), so
that its peak resident memory is its own. Peak memory "beyond the features" is the process's
peak resident set size (VmHWM) minus its resident size once the features are in memory.
Times are wall clock, one evaluation each (the features are built before the clock starts).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time

import torch

CASES = ("matmul", "blocks", "whole")


def make_features(num_query: int, num_gallery: int, dim: int, seed: int = 0):
    """Gallery features of num_gallery / 10 identities (a random centre each, small against
    the noise, so that rankings are imperfect as real ones are) seen by 6 cameras, and
    queries that are noisy copies of gallery images of their identity, each under another
    camera than its original."""
    generator = torch.Generator().manual_seed(seed)
    g_pids = torch.randint(0, max(num_gallery // 10, 1), (num_gallery,), generator=generator)
    gallery = 0.15 * torch.randn(int(g_pids.max()) + 1, dim, generator=generator)[g_pids]
    gallery += torch.randn(num_gallery, dim, generator=generator)
    g_camids = torch.randint(0, 6, (num_gallery,), generator=generator)
    source = torch.randint(0, num_gallery, (num_query,), generator=generator)
    query = gallery[source] + torch.randn(num_query, dim, generator=generator)
    q_camids = (g_camids[source] + 1) % 6
    return query, gallery, g_pids[source].numpy(), g_pids.numpy(), q_camids.numpy(), g_camids.numpy()


def _resident_bytes(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def run_case(case: str, num_query: int, num_gallery: int, dim: int, query_block, metric: str = "euclidean") -> dict:
    """One case in this process: seconds and peak memory beyond the features."""
    from pan_model.evaluation import evaluate_features, metrics

    query, gallery, *labels = make_features(num_query, num_gallery, dim)
    baseline = _resident_bytes("VmRSS")
    with open("/proc/self/clear_refs", "w") as clear:  # reset VmHWM to the current size
        clear.write("5")
    started = time.perf_counter()
    if case == "matmul":  # the floor: every product of the distances, nothing kept
        for start in range(0, num_query, metrics.DISTANCE_CHUNK_ROWS):
            query[start : start + metrics.DISTANCE_CHUNK_ROWS] @ gallery.T
        scores = {}
    elif case == "blocks":
        scores = evaluate_features(query, gallery, *labels, metric=metric, query_block=query_block)
    else:  # the whole [Q, G] matrix, then the ranking
        cmc, mean_ap, mean_inp = metrics.evaluate_rank(metrics.compute_distance_matrix(query, gallery, metric), *labels)
        scores = {"rank1": float(cmc[0]), "mAP": mean_ap, "mINP": mean_inp}
    seconds = time.perf_counter() - started
    extra = _resident_bytes("VmHWM") - baseline
    return {
        "case": case, "seconds": seconds, "peak_extra_gib": extra / 2**30, "features_gib": baseline / 2**30,
        **{key: scores[key] for key in ("rank1", "mAP", "mINP") if key in scores},
    }  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--gallery", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512 + 14 * 256)
    parser.add_argument("--query-block", type=int, default=None, help="evaluate_features' query_block (default: its own)")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--metric", choices=("euclidean", "cosine"), default="euclidean")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)  # one case, in this process
    args = parser.parse_args(argv)
    size = (args.queries, args.gallery, args.dim, args.query_block)
    if args.case:
        print(json.dumps(run_case(args.case, *size, args.metric)))
        return 0
    results = []
    for case in args.cases:
        command = [sys.executable, "-m", "benchmarks.bench_eval_scale", "--case", case, "--queries", str(args.queries),
                   "--gallery", str(args.gallery), "--dim", str(args.dim), "--metric", args.metric]  # fmt: skip
        if args.query_block:
            command += ["--query-block", str(args.query_block)]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    floor = next((r["seconds"] for r in results if r["case"] == "matmul"), None)
    print(f"{args.queries} queries x {args.gallery} gallery, {args.dim}-d float32, {args.metric}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")  # fmt: skip
    print("| case | seconds | x matmul | peak memory beyond the features (GiB) | Rank-1 | mAP | mINP |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        ratio = f"{r['seconds'] / floor:.2f}" if floor else "-"
        scores = " | ".join(f"{100 * r[key]:.2f}" if key in r else "-" for key in ("rank1", "mAP", "mINP"))
        print(f"| {r['case']} | {r['seconds']:.1f} | {ratio} | {r['peak_extra_gib']:.2f} | {scores} |")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"size": size, "metric": args.metric, "results": results}, handle, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
