"""The benchmark's figures: memorization against held-out loss per arm, and training curves per arm."""

from __future__ import annotations

import math


def plot_tradeoff(arms: dict, path: str, title: str, heldout: str = "heldout_loss",
                  heldout_label: str = "held-out loss") -> None:
    """Memorization (exact extraction; gap) against held-out loss (the arms' ``heldout`` field), one point per arm
    with std error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, key, label in ((axes[0], "extraction_exact", "exact extraction rate (repeated)"),
                           (axes[1], "gap", "held-out minus repeated loss (nats)")):
        for i, (name, a) in enumerate(arms.items()):
            color = f"C{i % 10}"
            ax.errorbar(a[heldout], a[key], xerr=a.get(f"{heldout}_std", 0), yerr=a.get(f"{key}_std", 0),
                        fmt="o", color=color, capsize=3)
            ax.annotate(name, (a[heldout], a[key]), textcoords="offset points", xytext=(4, 4), fontsize=7,
                        color=color)
        ax.set_xlabel(f"{heldout_label} (nats/token, lower is better)")
        ax.set_ylabel(label + ", lower is better")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(curves: dict, path: str, title: str) -> None:
    """Per training arm: training loss, and the probe losses (repeated / held-out; drop and own for sinks)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(curves)
    cols = min(4, len(names)) or 1
    rows = math.ceil(len(names) / cols) or 1
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    for ax, name in zip(axes.flat, names):
        c = curves[name]
        if c["train_loss"]:
            steps, losses = zip(*c["train_loss"])
            ax.plot(steps, losses, color="0.6", lw=1, label="training loss")
        if c["probe"]:
            keys = [k for k in c["probe"][0] if k != "step"]
            steps = [p["step"] for p in c["probe"]]
            for k in keys:
                style = "-" if k.startswith("repeated") else "--"
                ax.plot(steps, [p[k] for p in c["probe"]], style, lw=1.5, label=k.replace("_plain", ""))
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("loss (nats/token)")
        ax.legend(fontsize=6)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
