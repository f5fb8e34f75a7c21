"""Plot MiLA's TPD schedule (engine.plans.core.tpd_table): sigma per frame against the step.

    python bench/tpd_plot.py            # -> out/bench/tpd_schedule.png
    python bench/tpd_plot.py --out bench/results/tpd_schedule.png    # the committed figure the README shows

Two panels on the mila recipe's base (rectified-flow sigmas, 50 steps, shift 5), a clip of
7 generated frames: strength 0 (every frame the base schedule) and strength 1 (the recipe's).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_io import out_path  # noqa: E402
from engine.plans.core import tpd_table  # noqa: E402
from engine.sampling import flow_sigmas  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=None, help="PNG path (default out/bench/tpd_schedule.png)")
    p.add_argument("--smoke", action="store_true", help="accepted for symmetry: this takes seconds")
    a = p.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = flow_sigmas(50, 5.0).tolist()
    n = 7
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for ax, strength in zip(axes, (0.0, 1.0)):
        table = tpd_table(base, n, strength)
        for k in range(n):
            ax.plot(range(len(table)), [row[k] for row in table], color=plt.cm.viridis(k / (n - 1)),
                    label=f"frame {k}" if strength else None)
        ax.set_title(f"TPD strength {strength:g}" + (" (one schedule)" if strength == 0 else ""))
        ax.set_xlabel("denoising step")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("sigma")
    axes[1].legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    out = out_path(a.out, "tpd_schedule.png")
    fig.savefig(out, dpi=110)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
