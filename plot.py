"""Loss curves as a PNG, when matplotlib is installed (train.py's loss.png, miniature.py's)."""


def plot_available():
    try:
        import matplotlib  # noqa: F401

        return True
    except ImportError:
        return False


def plot(curves, path, ylabel, title=None):
    """Curves {label: (training tokens, values)} as a PNG (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for label, (tokens, values) in curves.items():
        ax.plot(tokens, values, label=label)
    ax.set(xlabel="training tokens", ylabel=ylabel, title=title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
