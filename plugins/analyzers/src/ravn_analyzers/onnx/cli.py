"""``ravn train``: learn a host's normal behaviour from events recorded with ``ravn record``.

    ravn train --events recorded.jsonl [--events more.jsonl] --output model.onnx [--steps N] [--name NAME]

The events (one JSON object per line, fields as in ravn_core/events.py) are grouped into one token stream per
process (``proc.pid``; the stream of an exited process stays open for its last syscall summary, which the probe
flushes after the exit event, and ends when a ``fork`` reuses the pid) and tokenized as the
analyzer does (tokens.py). A share of the processes is held back for calibration. The ONNX model carries its
feature schema, version and calibration in its metadata (model.py). Needs torch (the ``train`` extra).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ravn_analyzers.onnx.tokens import event_tokens
from ravn_core.errors import EXIT_CONFIG, EXIT_ENVIRONMENT, EXIT_OK


def add_train_command(subparsers: Any) -> None:
    p = subparsers.add_parser("train", help="train the ONNX analyzer's model on recorded benign events",
                              description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--events", action="append", required=True, metavar="JSONL",
                   help="events recorded with `ravn record` (repeat for several files)")
    p.add_argument("--output", required=True, help="where to write the ONNX model")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the tuned value)")
    p.add_argument("--name", default="ravn-host-lm", help="model name recorded in the model and in alerts")
    p.add_argument("--model-version", default="", help="model version (default: 1.0.0+<UTC time>)")
    p.add_argument("--holdout", type=float, default=None, help="share of processes held back for calibration")
    p.add_argument("--min-tokens", type=int, default=2, help="ignore processes with fewer tokens than this")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_train)


def read_sequences(paths: Iterable[str], min_tokens: int = 2) -> tuple[list[list[str]], dict[str, int]]:
    """Token streams per process from JSONL files, in file order. Returns (sequences, stats)."""
    open_streams: dict[tuple[str, int], list[str]] = {}
    exited: set[tuple[str, int]] = set()
    done: list[list[str]] = []
    stats = {"events": 0, "bad_lines": 0, "tokens": 0}
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    ev = json.loads(line)
                except json.JSONDecodeError:
                    stats["bad_lines"] += 1
                    continue
                if not isinstance(ev, dict):
                    stats["bad_lines"] += 1
                    continue
                stats["events"] += 1
                pid = ev.get("proc.pid")
                if not isinstance(pid, int):
                    continue
                host = str(ev.get("host", ""))
                key = (host, pid)
                if ev.get("evt.type") == "fork":  # pid reuse: the exited process it belonged to is complete
                    ckey = (host, ev.get("fork.child_pid", 0))
                    if ckey in exited:
                        exited.discard(ckey)
                        seq = open_streams.pop(ckey, None)
                        if seq:
                            done.append(seq)
                toks = event_tokens(ev)
                if toks:
                    open_streams.setdefault(key, []).extend(toks)
                    stats["tokens"] += len(toks)
                if ev.get("evt.type") == "exit":
                    exited.add(key)  # its last syscall summary usually follows: the stream stays open
    done.extend(open_streams.values())
    seqs = [s for s in done if len(s) >= min_tokens]
    stats["processes"] = len(seqs)
    return seqs, stats


def cmd_train(args: argparse.Namespace, host: Any = None) -> int:
    try:
        import torch  # noqa: F401 - training needs it; checked first for a clear message
    except ImportError:
        print("ravn train: torch is not installed; pip install 'ravn-analyzers[train]' "
              "(CPU build: pip install torch --index-url https://download.pytorch.org/whl/cpu)", file=sys.stderr)
        return EXIT_ENVIRONMENT
    from ravn_analyzers.onnx.train import TrainParams, train

    for path in args.events:
        if not Path(path).is_file():
            print(f"ravn train: {path}: no such file", file=sys.stderr)
            return EXIT_CONFIG
    seqs, stats = read_sequences(args.events, args.min_tokens)
    if len(seqs) < 2:
        print(f"ravn train: {', '.join(args.events)}: only {len(seqs)} process(es) with at least "
              f"{args.min_tokens} tokens in {stats['events']} events; record longer (`ravn record`)", file=sys.stderr)
        return EXIT_CONFIG
    params = TrainParams(seed=args.seed, threads=args.threads)
    if args.steps:
        params.steps = args.steps
    if args.holdout is not None:
        params.holdout = args.holdout
    print(f"ravn train: {stats['events']} events, {len(seqs)} processes, {stats['tokens']} tokens"
          + (f", {stats['bad_lines']} bad lines skipped" if stats["bad_lines"] else ""), file=sys.stderr)
    t0 = time.perf_counter()
    src = ", ".join(Path(p).name for p in args.events)
    res = train(seqs, params, name=args.name, version=args.model_version,
                trained_on=f"{src}: {len(seqs)} processes, {stats['tokens']} tokens",
                progress=lambda m: print(f"ravn train: {m}", file=sys.stderr))
    Path(args.output).write_bytes(res.model)
    th = ", ".join(f"{r:g}: {v:.3f}" for r, v in sorted(res.thresholds.items(), reverse=True))
    print(f"ravn train: wrote {args.output} ({len(res.model)} bytes): vocabulary {len(res.vocab)} tokens, "
          f"fit {res.fit_seconds:.1f} s ({time.perf_counter() - t0:.1f} s total), "
          f"calibrated on {res.heldout_sequences} scored held-back processes: thresholds (false-alarm rate: nats) {th}",
          file=sys.stderr)
    return EXIT_OK
