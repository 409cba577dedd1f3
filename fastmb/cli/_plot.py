"""Draw ``history.png`` for ``fastmb simulate`` in a helper process.

Run as a script by its path (``python .../_plot.py``), not imported: it needs nothing of
fastmb, so its start costs only Python and matplotlib. ``fastmb simulate`` starts it when
a run begins; it imports matplotlib (about 0.65 s, a third of a warm run) on the other
core while the rounds run, then reads ``{"history": [...], "path": ..., "title": ...}`` as
JSON on stdin and writes the plot.
"""

import json
import sys

import matplotlib

matplotlib.use("Agg", force=True)
import matplotlib.pyplot as plt  # (after choosing the backend)


def plot_history(history, path, title):
    ev = [h for h in history if h["loss"] is not None]
    rounds = [h["round"] for h in ev]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.4))
    if ev and ev[0]["accuracy"] is not None:
        a1.plot(rounds, [h["accuracy"] for h in ev], marker=".")
        a1.set_ylabel("test accuracy")
    a1.set_xlabel("round")
    a2.plot(rounds, [h["loss"] for h in ev], marker=".", color="C1")
    a2.set_ylabel("test loss")
    a2.set_xlabel("round")
    for ax in (a1, a2):
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    # Fixed margins: tight_layout measures every text first and doubled the drawing time.
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.14, top=0.88, wspace=0.25)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    job = json.load(sys.stdin)
    if job is not None:  # None: the run ended without a plot (an error, Ctrl-C)
        plot_history(job["history"], job["path"], job["title"])
