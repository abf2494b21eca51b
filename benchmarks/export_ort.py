"""Question: how fast does an exported b0 serve on CPU, against effnet_jax and the torch twin? And which ONNX path?

One process, b0 at 224 px, float32, batches 1 and 32, interleaved medians of `--reps`: ONNX Runtime (CPU provider,
default session options, all cores) on `effnet export --format onnx` (the twin through torch.onnx), the StableHLO
artifact called through `jax.export`, effnet_jax jitted, and the torch twin eager channels_last. Where jax2onnx
imports (it pins orbax-checkpoint below what effnet trains with, so it lives in its own venv), its ONNX graph of the
JAX model is timed beside it: the measurement behind the choice of exporter (effnet_jax/export/onnx.py). Each ONNX
row also reports its node count, opset and max |diff| to effnet_jax. Which allocator the process ran on is recorded.

Run from the repo root: `python benchmarks/export_ort.py [--reps 7]`; writes
`benchmarks/results/export-ort-cpu.{json,md}`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.getcwd())

RES = 224
BATCHES = (1, 32)


def _onnx_session(data: bytes):
    import onnxruntime as ort

    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def _graph_facts(data: bytes) -> dict:
    import onnx

    m = onnx.load_from_string(data)
    return {"nodes": len(m.graph.node), "opset": max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")),
            "mb": round(len(data) / 2**20, 1)}  # fmt: skip


def _jax2onnx(model) -> tuple[bytes, float] | None:
    try:
        from jax2onnx import to_onnx
    except ModuleNotFoundError:
        return None
    from effnet_jax import ModelOptions, model_from_state_dict, state_dict_from_model

    options = ModelOptions(depthwise_impl="grouped")  # one grouped Conv, as the torch path writes it
    net = model_from_state_dict(model.spec, state_dict_from_model(model), options=options)
    net.eval()
    t = time.perf_counter()
    proto = to_onnx(net, [("B", RES, RES, 3)], model_name="effnet_b0")
    seconds = time.perf_counter() - t
    return proto.SerializeToString(), seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()

    import jax
    import torch
    from flax import nnx

    from effnet_jax import from_torch
    from effnet_jax.bench.harness import environment, interleaved
    from effnet_jax.export import export, load_stablehlo
    from effnet_jax.ops.allocator import active

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    twin = __import__("effnet_torch").EfficientNet.from_name("b0").eval()
    with torch.no_grad():  # BN statistics off their init values, so the logits (and any difference) are O(1)
        for name, t in twin.state_dict().items():
            if name.endswith("running_var"):
                t.uniform_(0.5, 2.0)
            elif name.endswith("running_mean"):
                t.normal_(0, 0.1)
    model = from_torch(twin)
    tmp = tempfile.mkdtemp()
    seconds, facts, runners = {}, {}, {}

    for fmt, name in (("onnx", "b0.onnx"), ("stablehlo", "b0.stablehlo")):
        t = time.perf_counter()
        export(model, os.path.join(tmp, name), format=fmt, verify=False)
        seconds[fmt] = time.perf_counter() - t
    with open(os.path.join(tmp, "b0.onnx"), "rb") as f:
        onnx_bytes = f.read()
    facts["ONNX Runtime (effnet export: torch.onnx)"] = _graph_facts(onnx_bytes)
    runners["ONNX Runtime (effnet export: torch.onnx)"] = ("nchw", _onnx_session(onnx_bytes))
    hlo = load_stablehlo(os.path.join(tmp, "b0.stablehlo"))
    runners["StableHLO artifact (jax.export, CPU)"] = ("nhwc", lambda x: np.asarray(hlo.call(x)))
    j2o = _jax2onnx(model)
    if j2o is not None:
        facts["ONNX Runtime (jax2onnx)"] = _graph_facts(j2o[0])
        seconds["jax2onnx"] = j2o[1]
        runners["ONNX Runtime (jax2onnx)"] = ("nhwc", _onnx_session(j2o[0]))
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))
    runners["effnet_jax (jit)"] = ("nhwc", lambda x: np.asarray(forward(state, x)))

    twin_cl = twin.to(memory_format=torch.channels_last)

    def torch_cl(x):  # x arrives channels_last already (prepared outside the timing, as every runtime's input)
        with torch.inference_mode():
            return twin_cl(x).numpy()

    runners["effnet_torch eager channels_last"] = ("torch_cl", torch_cl)

    rows = []
    for batch in BATCHES:
        x = np.random.default_rng(batch).standard_normal((batch, RES, RES, 3), dtype=np.float32)
        xs = {"nhwc": x, "nchw": np.ascontiguousarray(x.transpose(0, 3, 1, 2))}
        xs["torch_cl"] = torch.from_numpy(xs["nchw"]).contiguous(memory_format=torch.channels_last)
        ref = runners["effnet_jax (jit)"][1](x)
        diffs, calls = {}, {}
        for name, (layout, fn) in runners.items():
            diffs[name] = float(np.abs(fn(xs[layout]) - ref).max())  # also the warm-up call
            fn(xs[layout])
            calls[name] = lambda fn=fn, v=xs[layout]: fn(v)
        times = interleaved(calls, args.reps)
        for name, ts in times.items():
            rows.append({"runtime": name, "batch": batch, "img_s": batch / statistics.median(ts),
                         "max_abs_diff_vs_jax": diffs[name], **facts.get(name, {})})  # fmt: skip

    result = {"env": environment("cpu"), "allocator": active(), "reps": args.reps, "export_s": seconds, "rows": rows}
    rows_by = {r["runtime"]: {} for r in rows}
    for r in rows:
        rows_by[r["runtime"]][r["batch"]] = r
    jax_ips = {b: rows_by["effnet_jax (jit)"][b]["img_s"] for b in BATCHES}
    env = result["env"]
    lines = [
        f"# Exported b0 on CPU: ONNX Runtime vs effnet_jax vs the torch twin ({RES} px, float32)",
        "",
        f"{env['cpu']}, {env['cpu_count']} cores; allocator {result['allocator'] or 'glibc'}; jax {env['jax']}, "
        f"torch {env['torch']}, onnxruntime {__import__('onnxruntime').__version__}; medians of {args.reps}, "
        "interleaved, one process.",
        "",
        "| runtime | " + " | ".join(f"batch {b} img/s (x effnet_jax)" for b in BATCHES) + " | nodes | opset | MB "
        "| max abs diff vs effnet_jax |",
        "|---|" + "---|" * len(BATCHES) + "---|---|---|---|",
    ]
    for name, by in rows_by.items():
        cells = " | ".join(f"{by[b]['img_s']:.1f} ({by[b]['img_s'] / jax_ips[b]:.2f}x)" for b in BATCHES)
        f = facts.get(name, {})
        diff = max(by[b]["max_abs_diff_vs_jax"] for b in BATCHES)
        lines.append(f"| {name} | {cells} | {f.get('nodes', '')} | {f.get('opset', '')} | {f.get('mb', '')} "
                     f"| {diff:.1e} |")  # fmt: skip
    lines += ["", "Export seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items())]
    from effnet_jax.bench.report import write_results

    write_results(args.out, "export-ort-cpu", result, "\n".join(lines))


if __name__ == "__main__":
    main()
