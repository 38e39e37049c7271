"""Training curves for MQAR runs (matplotlib, Agg backend, written atomically)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["plot_history", "plot_table"]


def plot_history(runs: dict[str, list[dict]], path: str | Path, title: str = "MQAR accuracy") -> Path:
    """runs: label -> history (list of {"step", "kv64", ...}); one line per (run, test set)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from anybudget.io import atomic_path

    fig, ax = plt.subplots(figsize=(7, 4))
    for label, hist in runs.items():
        if not hist:
            continue
        keys = [k for k in hist[0] if k.startswith("kv")]
        steps = [h["step"] for h in hist]
        for k in keys:
            ax.plot(steps, [h[k] for h in hist], marker=".", label=f"{label} {k}")
    ax.set_xlabel("step")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.legend(fontsize=6)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return Path(path)


def plot_table(rows: list[dict], path: str | Path, title: str = "MQAR accuracy at 256 kv pairs") -> Path:
    """rows: {"label", "ours", "paper"} -> grouped bar chart (accuracy in percent)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from anybudget.io import atomic_path

    fig, ax = plt.subplots(figsize=(7, 4))
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [r["ours"] for r in rows], width=0.4, label="ours")
    ax.bar([x + 0.2 for x in xs], [r["paper"] if r["paper"] is not None else 0 for r in rows],
           width=0.4, label="paper")
    ax.set_xticks(list(xs))
    ax.set_xticklabels([r["label"] for r in rows], rotation=30, fontsize=7)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return Path(path)
