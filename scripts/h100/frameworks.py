#!/usr/bin/env python3
"""Framework workloads for issue 7's proof, run once natively and once on the
guest driver (the same script; LD_LIBRARY_PATH and GPUVISOR_TRANSPORT pick
the driver). Each mode prints one line `FW {json}` with its figures, and
saves tensors under --out for runtime.py to compare between the two runs.

    frameworks.py info|gemm|cupy|train [--out DIR] [--graphs]
"""
import argparse
import json
import os
import sys
import time
import traceback


def emit(**kw):
    print("FW " + json.dumps(kw), flush=True)


def info(a):
    import torch
    ok = torch.cuda.is_available()
    out = {"mode": "info", "torch": torch.__version__, "cuda_available": ok}
    if ok:
        p = torch.cuda.get_device_properties(0)
        out.update(name=p.name, total_memory=p.total_memory, cc=f"{p.major}.{p.minor}",
                   sms=p.multi_processor_count, device_count=torch.cuda.device_count())
        x = torch.arange(1 << 20, device="cuda", dtype=torch.float32)
        out["sum"] = float((x * 2).sum().item())
    emit(**out)


def events_ms(fn, reps):
    import torch
    fn()
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(reps):
        fn()
    e.record()
    e.synchronize()
    return s.elapsed_time(e) / reps


def gemm(a):
    import torch
    torch.manual_seed(0)
    n = a.n
    res = {"mode": "gemm", "n": n}
    for name, dt in (("sgemm", torch.float32), ("hgemm", torch.float16)):
        torch.backends.cuda.matmul.allow_tf32 = False
        A = torch.randn(n, n, device="cuda", dtype=dt)
        B = torch.randn(n, n, device="cuda", dtype=dt)
        C = A @ B
        torch.cuda.synchronize()
        # Rows to compare with the other run (the inputs are seeded).
        torch.save(C[:64].float().cpu(), os.path.join(a.out, f"{name}.pt"))
        ms = events_ms(lambda: torch.mm(A, B, out=C), a.reps)
        wall0 = time.perf_counter()
        for _ in range(a.reps):
            torch.mm(A, B, out=C)
        torch.cuda.synchronize()
        wall = (time.perf_counter() - wall0) / a.reps * 1e3
        res[name] = {"ms": ms, "wall_ms": wall, "tflops": 2 * n ** 3 / (wall * 1e-3) / 1e12}
    emit(**res)


def cupy_basic(a):
    import cupy as cp
    x = cp.arange(1 << 20, dtype=cp.float32)
    y = cp.sin(x) * 2 + 1
    s = float(y.sum())
    m = cp.random.RandomState(1).standard_normal((512, 512), dtype=cp.float32)
    d = float(cp.linalg.norm(m @ m.T))
    k = cp.ElementwiseKernel("float32 a", "float32 b", "b = a * a + 1", "sq1")
    z = float(k(x[:1000]).sum())
    emit(mode="cupy", cupy=cp.__version__, sum=s, norm=d, kernel=z)


def train(a):
    import torch
    import torch.nn as nn
    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)
    dev = "cuda"
    if a.model == "cnn":
        model = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 8 * 8, 256), nn.ReLU(), nn.Linear(256, 10)).to(dev)
        gen = torch.Generator().manual_seed(1)
        xs = torch.randn(a.steps + 5, 128, 3, 32, 32, generator=gen)
        ys = torch.randint(0, 10, (a.steps + 5, 128), generator=gen)
    else:
        class MeanPool(nn.Module):
            def forward(self, x):
                return x.mean(1)

        # Mean-pooled and a smaller step than the CNN's: flattened into one
        # wide layer at lr 0.01 it diverged (losses 0.7 -> 170 in 30 steps),
        # and a diverging run amplifies rounding until no two runs agree.
        layer = nn.TransformerEncoderLayer(d_model=256, nhead=8, dim_feedforward=1024, batch_first=True, dropout=0.0)
        model = nn.Sequential(nn.Embedding(1000, 256), nn.TransformerEncoder(layer, num_layers=4),
                              MeanPool(), nn.Linear(256, 10)).to(dev)
        gen = torch.Generator().manual_seed(1)
        xs = torch.randint(0, 1000, (a.steps + 5, 32, 64), generator=gen)
        ys = torch.randint(0, 10, (a.steps + 5, 32), generator=gen)
    opt = torch.optim.SGD(model.parameters(), lr=0.01 if a.model == "cnn" else 0.001, momentum=0.9)
    lossf = nn.CrossEntropyLoss()
    xs, ys = xs.to(dev), ys.to(dev)
    static_x, static_y = xs[0].clone(), ys[0].clone()

    def step():
        opt.zero_grad(set_to_none=False)
        loss = lossf(model(static_x), static_y)
        loss.backward()
        opt.step()
        return loss

    graph = None
    if a.graphs:
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for i in range(3):  # warm-up on a side stream, as CUDA graphs need
                static_x.copy_(xs[i]); static_y.copy_(ys[i]); step()
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_loss = step()
    losses, times = [], []
    for i in range(a.steps):
        static_x.copy_(xs[i]); static_y.copy_(ys[i])
        torch.cuda.synchronize()
        t = time.perf_counter()
        if graph is not None:
            graph.replay()
            loss = static_loss
        else:
            loss = step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
        losses.append(float(loss.item()))
    warm = times[5:] or times
    emit(mode="train", model=a.model, graphs=bool(a.graphs), losses=losses,
         step_ms=1e3 * sorted(warm)[len(warm) // 2], steps=a.steps)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["info", "gemm", "cupy", "train"])
    ap.add_argument("--out", default=".")
    ap.add_argument("--n", type=int, default=8192)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--model", choices=["cnn", "transformer"], default="cnn")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--graphs", action="store_true")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    try:
        {"info": info, "gemm": gemm, "cupy": cupy_basic, "train": train}[a.mode](a)
    except Exception as e:  # the run goes on; the JSON says what failed
        traceback.print_exc()
        emit(mode=a.mode, error=f"{type(e).__name__}: {e}")
        sys.exit(1)


if __name__ == "__main__":
    main()
