"""Question: does XLA CPU run V2's Fused-MBConv convs (dense kxk, tens to hundreds of channels) as well as torch does?

Per distinct fused-conv shape of a variant at `--res` / `--batch` (times the blocks that have it): forward, input
gradient and kernel gradient of `effnet_jax.ops.dense.dense_conv`, jitted, against torch's channels_last
`aten.convolution` / `convolution_backward` (oneDNN), interleaved in one process. The kernel gradient twice: XLA's
own (`kernel_grad="lax"`, "jax dk") and as kh*kw matmuls, one per tap, over the input's shifted strided window
(`kernel_grad="taps"`, "jax dk taps", checked against XLA's before timing); "auto" column: which one `dense_conv` ships
for that shape on CPU. V1 has no such conv (its only kxk dense conv is the 3-channel stem, which has native kernels),
so `effnet bench`'s V2 ratios against b0's are read with this. `--shapes side:cin:cout:k:s,...`: more shapes (row
"extra"). `--model-ab V,...`: then the whole train step `effnet bench` times, as shipped and with XLA's kernel
gradient in every fused conv (`EFFNET_DENSE_KGRAD=lax` while it is built), interleaved, `--rounds` rounds of `--reps`.

`LD_PRELOAD=.../libtcmalloc_minimal.so.4 python benchmarks/fused_conv.py [--variants v2_b0,v2_s] [--res 128]
[--batch 32] [--reps 5] [--shapes 64:16:16:3:1] [--model-ab v2_b0 --rounds 2]`; writes
`benchmarks/results/fused-conv-<tag>.json` and `.md`.
"""

from __future__ import annotations

import argparse
import os
import statistics

COLUMNS = ("jax fwd", "torch fwd", "jax dx", "torch dx", "jax dk", "jax dk taps", "torch dk")


def fused_shapes(variant: str, res: int) -> dict[tuple[int, int, int, int, int], list[int]]:
    """(input side, in channels, out channels, kernel, stride) -> the block indices whose fused conv has it."""
    from effnet_spec import resolve

    spec = resolve(variant)
    side, shapes = -(-res // 2), {}  # after the stride-2 stem
    for b in spec.blocks:
        if b.fused:
            shape = (side, b.in_ch, b.mid_ch if b.has_expand else b.out_ch, b.kernel, b.stride)
            shapes.setdefault(shape, []).append(b.index)
        side = -(-side // b.stride)
    return shapes


def model_ab(variant: str, res: int, batch: int, rounds: int, reps: int) -> list[dict]:
    """The train step as shipped vs with XLA's kernel gradient in every fused conv, both built and warmed, then
    interleaved rounds. Counts the convs that took the taps in each build, so a build that did not see the switch
    cannot pass for the other."""
    from _run import patched

    from effnet_jax.bench.contenders import jax_train
    from effnet_jax.bench.harness import interleaved
    from effnet_jax.ops import dense

    taps_conv, taps = dense._taps_conv, []
    counting = {"effnet_jax.ops.dense._taps_conv": lambda *a: taps.append(a[1].shape) or taps_conv(*a)}
    with patched(counting):
        shipped, shipped_compile, _ = jax_train(variant, res, batch)
        shipped_taps = len(taps)
        os.environ[dense.ENV_VAR] = "lax"
        try:
            lax_step, lax_compile, _ = jax_train(variant, res, batch)
        finally:
            del os.environ[dense.ENV_VAR]
    assert shipped_taps > 0 and len(taps) == shipped_taps, (shipped_taps, len(taps))
    for run in (shipped, lax_step, shipped, lax_step):
        run()
    out = []
    for r in range(rounds):
        times = interleaved({"shipped": shipped, "lax": lax_step}, reps)
        ms = {name: statistics.median(ts) * 1e3 for name, ts in times.items()}
        out.append(dict(variant=variant, res=res, batch=batch, round=r + 1, ms=ms, taps_convs=shipped_taps,
                        compile_s={"shipped": shipped_compile, "lax": lax_compile}))  # fmt: skip
        print(f"{variant} train step round {r + 1}: XLA's kernel gradient {ms['lax']:.0f} ms, shipped "
              f"{ms['shipped']:.0f} ms ({ms['lax'] / ms['shipped']:.2f}x)", flush=True)  # fmt: skip
    return out


def measure(shape, batch: int, reps: int) -> tuple[dict[str, float], str]:
    """Median ms of one call of each column at `shape`, interleaved; and the kernel gradient "auto" ships there."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    from effnet_jax.bench.harness import interleaved
    from effnet_jax.ops import dense

    side, cin, cout, k, s = shape
    p = k // 2
    pads = ((p, p), (p, p))
    conv = lambda x, w, kernel_grad="auto": dense.dense_conv(x, w, s, pads, kernel_grad)  # noqa: E731
    keys = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(keys[0], (batch, side, side, cin), jnp.float32)
    w = jax.random.normal(keys[1], (k, k, cin, cout), jnp.float32) * 0.1
    g = jax.random.normal(keys[2], jax.eval_shape(conv, x, w).shape, jnp.float32)
    fwd = jax.jit(conv)
    dx = jax.jit(lambda x, w, g: jax.vjp(lambda x: conv(x, w), x)[1](g)[0])
    dk = jax.jit(lambda x, w, g: jax.vjp(lambda w: conv(x, w, "lax"), w)[1](g)[0])
    dk_taps = jax.jit(lambda x, w, g: jax.vjp(lambda w: conv(x, w, "taps"), w)[1](g)[0])
    want, got = np.asarray(dk(x, w, g)), np.asarray(dk_taps(x, w, g))
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max(), "the taps compute another function"

    cl = torch.channels_last
    tx = torch.from_numpy(np.asarray(x)).permute(0, 3, 1, 2).contiguous(memory_format=cl)
    tw = torch.from_numpy(np.asarray(w)).permute(3, 2, 0, 1).contiguous(memory_format=cl)
    tg = torch.from_numpy(np.asarray(g)).permute(0, 3, 1, 2).contiguous(memory_format=cl)
    conv_bwd = torch.ops.aten.convolution_backward

    def torch_bwd(mask):
        return lambda: conv_bwd(tg, tx, tw, None, [s, s], [p, p], [1, 1], False, [0, 0], 1, mask)

    fns = {
        "jax fwd": lambda: fwd(x, w).block_until_ready(),
        "torch fwd": lambda: torch.nn.functional.conv2d(tx, tw, stride=s, padding=p),
        "jax dx": lambda: dx(x, w, g).block_until_ready(),
        "torch dx": torch_bwd([True, False, False]),
        "jax dk": lambda: dk(x, w, g).block_until_ready(),
        "jax dk taps": lambda: dk_taps(x, w, g).block_until_ready(),
        "torch dk": torch_bwd([False, True, False]),
    }
    with torch.no_grad():
        for f in fns.values():  # compile and warm up
            f()
            f()
        times = interleaved(fns, reps)
    auto = "taps" if dense._taps_pay(x, w) else "lax"
    return {name: statistics.median(ts) * 1e3 for name, ts in times.items()}, auto


def markdown(result: dict) -> str:
    env, a = result["env"], result["args"]
    lines = [
        f"# Fused-MBConv convs, XLA CPU vs torch channels_last ({env['date']}, git {env['git_sha']})",
        "",
        f"Machine: {env['cpu']}, {env['cpu_count']} cores, load average at start {env['load_avg_start'][0]:.1f}; "
        f"jax {env['jax']}, torch {env['torch']} ({env['torch_threads']} threads); allocator {env['allocator']}.",
        f"Batch {a['batch']}, {a['res']} px, symmetric padding, float32; median ms of {a['reps']} interleaved calls, "
        "times the blocks with that shape. dx / dk: input / kernel gradient; dk: XLA's; dk taps: one matmul per tap "
        '(`dense_conv(kernel_grad="taps")`); auto: the one `dense_conv` ships there on CPU.',
    ]
    if result["rows"]:
        lines += ["", "| variant | blocks | input | conv | auto | " + " | ".join(COLUMNS) + " |",
                  "|---|---|---|---|---|" + "---:|" * len(COLUMNS)]  # fmt: skip
    for r in result["rows"]:
        conv = f"{r['cin']}->{r['cout']} k{r['kernel']} s{r['stride']}"
        cells = " | ".join(f"{r['ms'][c]:.1f}" for c in COLUMNS)
        lines.append(
            f"| {r['variant']} | {','.join(map(str, r['blocks']))} | {r['side']}x{r['side']} | {conv} | {r['auto']} | "
            f"{cells} |"
        )
    for variant, total in result["totals"].items():
        cells = " | ".join(f"**{total[c]:.1f}**" for c in COLUMNS)
        lines.append(f"| {variant} | all fused | | **total** | | {cells} |")
    lines += [] if not result["totals"] else ["", "jax / torch, per variant (all fused convs): " + "; ".join(
        f"{v}: fwd {t['jax fwd'] / t['torch fwd']:.2f}x, dx {t['jax dx'] / t['torch dx']:.2f}x, "
        f"dk {t['jax dk'] / t['torch dk']:.2f}x (taps {t['jax dk taps'] / t['torch dk']:.2f}x, as shipped "
        f"{t['jax dk auto'] / t['torch dk']:.2f}x)"
        for v, t in result["totals"].items()) + " (> 1: JAX slower)"]  # fmt: skip
    if result.get("model_ab"):
        lines += [
            "",
            f"Whole train step (`effnet bench`'s), as shipped (the taps in the fused convs marked auto = taps) vs "
            f"XLA's kernel gradient in every fused conv (`EFFNET_DENSE_KGRAD=lax`), medians of {a['reps']} "
            "interleaved calls per round:",
            "",
            "| variant | px | batch | round | convs with taps | XLA dk ms | shipped ms | speed-up "
            "| compile s, XLA dk / shipped |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for r in result["model_ab"]:
            ms, c = r["ms"], r["compile_s"]
            lines.append(f"| {r['variant']} | {r['res']} | {r['batch']} | {r['round']} | {r['taps_convs']} | "
                         f"{ms['lax']:.0f} | {ms['shipped']:.0f} | {ms['lax'] / ms['shipped']:.2f}x | "
                         f"{c['lax']:.0f} / {c['shipped']:.0f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="v2_b0,v2_s")
    parser.add_argument("--shapes", default="", help="comma list of side:cin:cout:kernel:stride, timed as 'extra'")
    parser.add_argument("--res", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--model-ab", default="", help="comma list of variants: also the whole train step A/B")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the model A/B")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--tag", default="cpu")
    args = parser.parse_args()

    from effnet_jax.bench.harness import environment
    from effnet_jax.bench.report import write_results

    env = environment("cpu")
    groups = [(v, fused_shapes(v, args.res)) for v in filter(None, args.variants.split(","))]
    extra = [tuple(int(n) for n in shape.split(":")) for shape in filter(None, args.shapes.split(","))]
    if extra:
        groups.append(("extra", {shape: [] for shape in extra}))
    rows, totals = [], {}
    for variant, shapes in groups:
        for shape, blocks in shapes.items():
            ms, auto = measure(shape, args.batch, args.reps)
            ms = {c: t * max(len(blocks), 1) for c, t in ms.items()}
            ms["jax dk auto"] = ms["jax dk taps" if auto == "taps" else "jax dk"]
            side, cin, cout, k, s = shape
            rows.append(dict(variant=variant, blocks=blocks, side=side, cin=cin, cout=cout, kernel=k, stride=s, ms=ms,
                             auto=auto))  # fmt: skip
            print(f"{variant} blocks {blocks} {side}px {cin}->{cout} k{k} s{s} (auto: {auto}): "
                  + ", ".join(f"{c} {ms[c]:.1f}" for c in COLUMNS), flush=True)  # fmt: skip
        if variant != "extra":
            totals[variant] = {c: sum(r["ms"][c] for r in rows if r["variant"] == variant)
                               for c in (*COLUMNS, "jax dk auto")}  # fmt: skip
    ab = [row for v in filter(None, args.model_ab.split(",")) for row in model_ab(v, args.res, args.batch,
          args.rounds, args.reps)]  # fmt: skip
    env["load_avg_end"] = os.getloadavg()
    result = {"env": env, "args": vars(args), "rows": rows, "totals": totals, "model_ab": ab}
    write_results(args.out, f"fused-conv-{args.tag}", result, markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
