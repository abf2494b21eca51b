"""A printable model summary in the shape of the paper's Table 1 (V2: Table 4), with totals."""

from __future__ import annotations

from .counting import block_costs, count_macs, count_params, input_hw
from .resolve import ModelSpec

__all__ = ["summary_rows", "summary", "variant_table"]


def summary_rows(spec: ModelSpec, size: int | tuple[int, int] | None = None) -> list[dict]:
    """One row per stage: stage number (1-based as in the paper), operator, input resolution, channels, layers."""
    hw = input_hw(spec, size)
    costs = block_costs(spec, hw)
    k = spec.stem_kernel
    rows = [dict(stage=1, operator=f"Conv{k}x{k}", resolution=hw, channels=spec.stem_ch, layers=1)]
    for s in range(spec.num_stages):
        blocks = spec.blocks_of(s)
        b0 = blocks[0]
        expand = b0.mid_ch // b0.in_ch
        rows.append(
            dict(
                stage=s + 2,
                operator=f"{'Fused-MBConv' if b0.fused else 'MBConv'}{expand}, k{b0.kernel}x{b0.kernel}",
                resolution=costs[b0.index].in_hw,
                channels=blocks[-1].out_ch,
                layers=len(blocks),
            )
        )
    rows.append(
        dict(
            stage=spec.num_stages + 2,
            operator="Conv1x1 & Pooling & FC",
            resolution=costs[-1].out_hw,
            channels=spec.head_ch,
            layers=1,
        )
    )
    return rows


def summary(spec: ModelSpec, size: int | tuple[int, int] | None = None) -> str:
    v = spec.variant
    rows = summary_rows(spec, size)
    train = f" (train {v.train_resolution})" if v.train_resolution else ""
    lines = [
        f"EfficientNet-{spec.name} (family {spec.family.name}; width {v.width:.4g}, depth {v.depth:.4g}, "
        f"resolution {v.resolution}{train}, dropout {spec.dropout:.3g}, drop-path {v.drop_path:.3g})",
        f"conventions: padding={spec.conv.padding} bn_eps={spec.conv.bn_eps:g} bn_decay={spec.conv.bn_decay:g} "
        f"running_var={spec.conv.running_var} activation={spec.conv.activation}",
        "",
        "| Stage | Operator | Resolution | Channels | Layers |",
        "|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        h, w = r["resolution"]
        lines.append(f"| {r['stage']} | {r['operator']} | {h}x{w} | {r['channels']} | {r['layers']} |")
    params = count_params(spec)
    macs = count_macs(spec, size)
    lines += [
        "",
        f"blocks: {len(spec.blocks)}   params: {params:,}   multiply-adds: {macs / 1e9:.3f} G"
        f"   FLOPs: {2 * macs / 1e9:.3f} G   classes: {spec.num_classes}",
    ]
    return "\n".join(lines)


def variant_table(num_classes: int = 1000) -> str:
    """Markdown table of every named variant: coefficients, parameters and multiply-adds at native resolution (V2's
    eval side; the side it trains at in brackets)."""
    from .resolve import resolve  # local: keeps the module's import list about one concern
    from .tables import VARIANTS

    lines = [
        "| variant | width | depth | resolution | dropout | blocks | params | multiply-adds |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, v in VARIANTS.items():
        spec = resolve(name, num_classes=num_classes)
        side = f"{v.resolution} (train {v.train_resolution})" if v.train_resolution else f"{v.resolution}"
        lines.append(
            f"| {name} | {v.width:g} | {v.depth:g} | {side} | {v.dropout:g} | {len(spec.blocks)} "
            f"| {count_params(spec):,} | {count_macs(spec) / 1e9:.3f} G |"
        )
    return "\n".join(lines)
