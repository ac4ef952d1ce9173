"""Draw the book's logo and favicon: a wide, shifted distribution normalised into a standard one.

Run from the repository root: ``.venv/bin/python tools/make_logo.py``. Writes book/_static/logo.svg
(sidebar logo), book/_static/favicon.png (32x32 browser-tab icon) and book/_extra/favicon.ico (the
same icon at the site's root, where browsers look for it on pages without an icon link).
"""
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
from matplotlib import pyplot as plt  # noqa: E402

OUT = Path(__file__).resolve().parent.parent / "book" / "_static"
GREY, BLUE, ORANGE = "#9aa5b1", "#2f6db5", "#e8833a"


def gauss(x: np.ndarray, mu: float, sigma: float) -> np.ndarray:
    """Normal density at x (any shape)."""
    return np.exp(-0.5 * ((x - mu) / sigma) ** 2) / (sigma * np.sqrt(2 * np.pi))


def logo(path: Path) -> None:
    """Sidebar logo: grey N(2.2, 1.6^2) -> arrow -> blue N(0, 1) with gamma/beta ticks, 4:1.6 aspect."""
    plt.rcParams["svg.hashsalt"] = "d2lbn"          # stable ids: the file does not change between runs
    fig, ax = plt.subplots(figsize=(4.0, 1.6))
    x = np.linspace(-4.2, 9.0, 600)
    before, after = gauss(x, 4.6, 1.6), gauss(x, -1.4, 0.62)
    ax.fill_between(x, before, color=GREY, alpha=0.35, lw=0)
    ax.plot(x, before, color=GREY, lw=2.5)
    ax.fill_between(x, after, color=BLUE, alpha=0.25, lw=0)
    ax.plot(x, after, color=BLUE, lw=3)
    ax.annotate("", xy=(0.35, 0.42), xytext=(3.2, 0.42),
                arrowprops=dict(arrowstyle="-|>", color=ORANGE, lw=3.5, mutation_scale=24))
    ax.text(1.78, 0.50, r"$\hat{x}=\frac{x-\mu}{\sigma}$", color=ORANGE, ha="center", va="bottom",
            fontsize=21)
    ax.axhline(0, color="#555555", lw=1.2)
    ax.set_xlim(-4.2, 9.0)
    ax.set_ylim(-0.02, 0.75)
    ax.axis("off")
    fig.subplots_adjust(0, 0, 1, 1)
    fig.savefig(path, transparent=True, metadata={"Date": None, "Creator": None})
    plt.close(fig)


def favicon(path: Path) -> None:
    """32x32 icon: the blue standard bell curve over a faint grey wide one."""
    fig, ax = plt.subplots(figsize=(1, 1), dpi=32)
    x = np.linspace(-3.2, 3.2, 200)
    ax.fill_between(x, gauss(x, 0, 1.8), color=GREY, alpha=0.6, lw=0)
    ax.fill_between(x, gauss(x, 0, 0.75), color=BLUE, lw=0)
    ax.set_xlim(-3.2, 3.2)
    ax.set_ylim(0, 0.56)
    ax.axis("off")
    fig.subplots_adjust(0, 0, 1, 1)
    fig.savefig(path, transparent=True, metadata={"Software": None})
    plt.close(fig)
    from PIL import Image

    ico = path.parent.parent / "_extra" / "favicon.ico"
    ico.parent.mkdir(parents=True, exist_ok=True)
    Image.open(path).save(ico, sizes=[(32, 32)])


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    logo(OUT / "logo.svg")
    favicon(OUT / "favicon.png")
    print("wrote", OUT / "logo.svg", OUT / "favicon.png", OUT.parent / "_extra" / "favicon.ico")
