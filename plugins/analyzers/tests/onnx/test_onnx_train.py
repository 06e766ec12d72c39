"""`ravn train` end to end (real torch fit, real ONNX export, real onnxruntime scoring) and export fidelity."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
from ravn_analyzers.onnx.cli import read_sequences
from ravn_analyzers.onnx.model import Scorer, score_sequences

from ravn_core.testing import require


def require_torch() -> Any:
    try:
        import torch
    except ImportError:
        require(False, "torch is not installed (training only; requirements-dev.txt installs torch==2.13.0)")
    return torch


# Two "programs" with their own habits: a shell-ish one and a server-ish one (x86_64 syscall numbers).
PROGRAMS = {
    "lister": [59, 12, 9, 257, 5, 217, 217, 3, 1, 231],
    "server": [41, 49, 50, 43, 0, 1, 3, 43, 0, 1, 3],
}


def recorded(path: Path, processes: int = 120, seed: int = 0) -> Path:
    rng = random.Random(seed)
    with open(path, "w") as f:
        for pid in range(1000, 1000 + processes):
            name = "lister" if pid % 2 else "server"
            prog = PROGRAMS[name]
            f.write(json.dumps({"evt.type": "exec", "proc.pid": pid, "proc.comm": name,
                                "exec.filename": f"/usr/bin/{name}", "exec.ret": 0}) + "\n")
            seq = prog * rng.randint(3, 8)
            for i in range(0, len(seq), 16):
                chunk = seq[i : i + 16]
                f.write(json.dumps({"evt.type": "syscall_summary", "proc.pid": pid, "proc.comm": name,
                                    "syscall.seq": chunk, "syscall.total": len(chunk),
                                    "syscall.counts": {}}) + "\n")
            f.write(json.dumps({"evt.type": "exit", "proc.pid": pid, "exit.code": 0}) + "\n")
        f.write("not json\n")
    return path


def test_read_sequences_groups_by_process_and_splits_at_pid_reuse(tmp_path: Path) -> None:
    p = tmp_path / "ev.jsonl"
    lines = [{"evt.type": "syscall", "proc.pid": 5, "syscall.nr": 0},
             {"evt.type": "syscall", "proc.pid": 6, "syscall.nr": 1},
             {"evt.type": "exit", "proc.pid": 5},
             {"evt.type": "syscall_summary", "proc.pid": 5, "syscall.seq": [231], "syscall.total": 1},  # late
             {"evt.type": "fork", "proc.pid": 1, "fork.child_pid": 5},  # pid 5 reused: a new process
             {"evt.type": "syscall", "proc.pid": 5, "syscall.nr": 2},
             {"evt.type": "syscall_summary", "proc.pid": 6, "syscall.seq": [3, 4], "syscall.total": 9}]
    p.write_text("".join(json.dumps(x) + "\n" for x in lines) + "[1]\n")
    seqs, stats = read_sequences([str(p)], min_tokens=1)
    assert sorted(seqs) == [["0", "@exit", "231"], ["1", "@gap", "3", "4"], ["2"], ["@fork"]]
    assert stats["bad_lines"] == 1 and stats["events"] == 7


def test_ravn_train_learns_normal_behaviour(tmp_path: Path) -> None:
    require_torch()
    from ravn_core.cli import main

    events = recorded(tmp_path / "benign.jsonl")
    out = tmp_path / "model.onnx"
    code = main(["train", "--events", str(events), "--output", str(out), "--steps", "150",
                 "--name", "unit-test-lm", "--model-version", "9.9.9", "--threads", "1"])
    assert code == 0 and out.stat().st_size > 1000
    scorer = Scorer(str(out))
    info = scorer.info
    assert info.name == "unit-test-lm" and info.version == "9.9.9"
    assert {"@exec", "@exit", "59", "41"} <= set(info.vocab)
    assert info.calibration.n_heldout == 24  # 20% of 120 processes held back
    t1 = info.calibration.threshold(0.01)
    assert 0 < t1 < 3
    normal = [scorer.encode(["@exec", *map(str, PROGRAMS["lister"] * 5), "@exit"])]
    odd = [scorer.encode(["@exec", *map(str, [101, 59, 41, 257, 33, 2, 231] * 6), "@exit"])]
    s_norm, s_odd = score_sequences(scorer, normal)[0], score_sequences(scorer, odd)[0]
    assert s_norm < t1 < s_odd


def test_ravn_train_errors(tmp_path: Path) -> None:
    require_torch()
    from ravn_core.cli import main

    assert main(["train", "--events", str(tmp_path / "missing.jsonl"), "--output", str(tmp_path / "m")]) == 2
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps({"evt.type": "syscall", "proc.pid": 1, "syscall.nr": 0}) + "\n")
    assert main(["train", "--events", str(one), "--output", str(tmp_path / "m")]) == 2


def test_onnx_graph_matches_the_torch_model() -> None:
    torch = require_torch()
    from ravn_analyzers.onnx.train import TrainParams, _torch_model, export_onnx
    from torch.nn import functional as F

    vocab = [str(i) for i in range(30)]
    for layers, kernel in ((1, 3), (2, 4), (3, 2)):
        p = TrainParams(embed=8, hidden=16, kernel=kernel, layers=layers, window=40)
        torch.manual_seed(layers)
        m = _torch_model(len(vocab) + 2, p)
        w = {k: v.detach().numpy() for k, v in m.state_dict().items()}
        meta = {"ravn.schema": "ravn-token-lm", "ravn.schema_version": "1", "ravn.vocab": json.dumps(vocab),
                "ravn.window": "40", "ravn.context": str(p.context),
                "ravn.calibration": json.dumps({"thresholds": {"0.01": 1.0}})}
        scorer = Scorer(export_onnx(w, p, meta))
        x = np.random.default_rng(layers).integers(1, len(vocab) + 2, size=(6, 40))
        x[3, 25:] = 0
        ref = F.cross_entropy(m(torch.from_numpy(x)).transpose(1, 2), torch.from_numpy(x), reduction="none")
        got = scorer.run(x)
        assert np.abs(ref.detach().numpy() - got)[x != 0].max() < 1e-4
