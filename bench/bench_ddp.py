"""Gradient averaging over 2 ranks: the trainer's overlapped buckets against one blocking all-reduce after backward.

"blocking" is the trainer before issue 21, kept here as the reference: a collective on the loss's finiteness,
backward, one flat all-reduce of every gradient, a collective on the norm's finiteness, and the host reads in
between. "overlapped" is :class:`nawsv.train.grad_sync.GradientSync`, as the trainer runs it. "compute" is the
same step without any communication: what a step cannot go below. The workload is the warm-up's largest
trainable set (the whole student with adapters, and the head; LayerDrop off so every step does the same work),
random init, on gloo (CPU) and, when 2 GPUs are visible, NCCL. The three kinds of step alternate within one run,
so the machine's load falls on them alike.

Figures per architecture and backend: steps/s of each kind, and the share of a step spent waiting for
communication, 1 - t(compute) / t(kind) (on CPU also the host time blocked in collectives); the ratios compare
the overlapped step and its exposed communication with the blocking ones. Target: only the last bucket exposed.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from bench.common import Figure

KINDS = ("compute", "blocking", "overlapped")
WORLD = 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _all_true(flag: bool, device: torch.device) -> bool:
    value = torch.tensor([int(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def _blocking_backward(loss: torch.Tensor, params: list[torch.nn.Parameter]) -> float:
    """The step's communication before issue 21; returns the seconds spent in collectives."""
    device, waited = loss.device, 0.0
    start = time.perf_counter()
    _all_true(bool(torch.isfinite(loss).item()), device)
    waited += time.perf_counter() - start
    loss.backward()
    for param in params:
        if param.grad is None:
            param.grad = torch.zeros_like(param)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    start = time.perf_counter()
    dist.all_reduce(flat)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    waited += time.perf_counter() - start
    flat /= WORLD
    offset = 0
    for param in params:
        param.grad.copy_(flat[offset:offset + param.numel()].view_as(param))
        offset += param.numel()
    norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params])))
    start = time.perf_counter()
    _all_true(math.isfinite(norm), device)
    return waited + time.perf_counter() - start


def _worker(rank: int, port: int, backend: str, preset: str, batch: int, seconds: float, steps: int,
            out: str) -> None:
    from nawsv.models.config import SSLConfig
    from nawsv.models.heads import WarmupHead
    from nawsv.models.ssl import build_student
    from nawsv.train.grad_sync import GradientSync

    device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or WORLD) // WORLD))
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        student = build_student(SSLConfig(preset=preset, layerdrop=0.0)).to(device).train()
        head = WarmupHead(student.num_hidden_states, student.hidden_size).to(device).train()
        params = [*student.parameters(), *head.parameters()]
        optimizer = torch.optim.Adam(params, lr=1e-7)
        sync = GradientSync(params, WORLD)
        wav = torch.randn(batch, int(seconds * 16000), generator=torch.Generator().manual_seed(rank)).to(device)
        times: dict[str, list[float]] = {kind: [] for kind in KINDS}
        waits: dict[str, list[float]] = {kind: [] for kind in KINDS}
        early: list[int] = []
        for round_ in range(steps + 1):                   # round 0 warms up (and orders GradientSync's buckets)
            for kind in KINDS:
                dist.barrier()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                start = time.perf_counter()
                loss = head(student(wav)).square().mean()
                if kind == "compute":
                    loss.backward()
                    waited = 0.0
                elif kind == "blocking":
                    waited = _blocking_backward(loss, params)
                else:
                    sync.backward(loss)
                    waited = sync.wait_seconds
                    early.append(sync.early_buckets)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                if round_:
                    times[kind].append(time.perf_counter() - start)
                    waits[kind].append(waited)
        if rank == 0:
            Path(out).write_text(json.dumps({
                "time": {k: statistics.median(v) for k, v in times.items()},
                "wait": {k: statistics.median(v) for k, v in waits.items()},
                "buckets": sync.num_buckets, "early": min(early[1:] or early),
                "params": sum(p.numel() for p in params)}))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _measure(backend: str, preset: str, batch: int, seconds: float, steps: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        mp.spawn(_worker, args=(_free_port(), backend, preset, batch, seconds, steps, str(out)), nprocs=WORLD,
                 join=True)
        return json.loads(out.read_text())


def _figures(label: str, result: dict) -> list[Figure]:
    t, wait = result["time"], result["wait"]
    exposed = {k: max(t[k] - t["compute"], 0.0) for k in KINDS}
    share = {k: exposed[k] / t[k] for k in KINDS}
    return [
        Figure(f"{label}: compute only, no communication", 1 / t["compute"], "steps/s",
               note=f"{result['params'] / 1e6:.1f} M parameters averaged"),
        Figure(f"{label}: blocking all-reduce after backward (before)", 1 / t["blocking"], "steps/s",
               note=f"waiting for communication {100 * share['blocking']:.0f} % of a step, host in collectives "
                    f"{100 * wait['blocking'] / t['blocking']:.0f} %"),
        Figure(f"{label}: overlapped buckets (after)", 1 / t["overlapped"], "steps/s", reference=1 / t["blocking"],
               note=f"waiting for communication {100 * share['overlapped']:.0f} % of a step, host in collectives "
                    f"{100 * wait['overlapped'] / t['overlapped']:.0f} %; {result['early']} of "
                    f"{result['buckets']} buckets started during backward"),
        Figure(f"{label}: exposed communication per step, overlapped", exposed["overlapped"], "s",
               reference=exposed["blocking"], target="only the last bucket exposed",
               note="ratio = blocking / overlapped"),
    ]


def run(args: argparse.Namespace) -> list[Figure]:
    steps = 2 if args.quick else 5
    cases = [("tiny", 4, 2.0, steps)]
    if not args.quick:
        cases.append(("wavlm_base_plus", 2, 1.0, 3))
    backends = ["gloo"] + (["nccl"] if torch.cuda.is_available() and torch.cuda.device_count() >= WORLD else [])
    if "nccl" not in backends:
        print("# ddp: NCCL needs 2 visible GPUs; gloo on CPU only", flush=True)
    figures: list[Figure] = []
    for backend in backends:
        for preset, batch, seconds, n in cases:
            label = f"{preset}, {backend} x{WORLD}, {batch} x {seconds:g} s per rank"
            figures += _figures(label, _measure(backend, preset, batch, seconds, n))
    return figures
