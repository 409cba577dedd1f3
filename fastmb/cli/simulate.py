"""``fastmb simulate``: settings from defaults, a TOML file and flags; run; write results.

Precedence: the built-in defaults, then the ``--config`` TOML file, then the flags given
on the command line. Every setting has one name, spelled with underscores in TOML and
with dashes as a flag (``batch_size`` / ``--batch-size``); the aggregator's and the server
optimizer's own options sit in TOML tables ``[aggregator_options]`` and
``[server_options]`` or in repeated ``--aggregator-option KEY=VALUE`` flags.
"""

from __future__ import annotations

import argparse
import csv
import difflib
import json
import os
import pickle
import subprocess
import sys
import threading
import time

import numpy as np
from numba.core import event as numba_event

from .. import _validation as V
from ..adapters.dask import DaskExecutor
from ..aggregate import rules
from ..aggregate.mean import fedavg
from ..aggregate.server import OPTIMIZERS
from ..federation import data as D
from ..federation import partition as Pt
from ..federation.data import TASKS
from ..federation.simulation import Faults, Simulation, summary
from ..learn.gradients import evaluate
from ..learn.training import train_clients
from ..models import MLP, Linear
from ..secure import SecAggConfig
from ..slicing import (
    WidthMean,
    check_cut,
    evaluate_width,
    multiply_adds,
    split_sgd,
    splitfed,
    train_width_clients,
)

#: Every setting, its default and its help. The default run: digits, 100 clients with
#: Dirichlet(0.5) label skew, an MLP 64-64-10, FedAvg, 30 rounds.
SETTINGS = {
    "data": ("digits", "digits (scikit-learn's, bundled), synthetic, or a .npz/.npy/.csv file"),
    "n_samples": (100_000, "rows of the synthetic set"),
    "n_features": (64, "features of the synthetic set"),
    "n_classes": (10, "classes of the synthetic set"),
    "test_fraction": (0.2, "held-out share of a user's file without a stored test split"),
    "task": ("auto", "auto, classification or regression: how to read a user file's labels "
             "(auto: integer values are class indices 0..C-1, others regression targets)"),
    "model": ("mlp", "mlp or linear (softmax regression for classes, least squares otherwise)"),
    "hidden": ([64], "hidden layer widths of the MLP, e.g. 64 or 128,64"),
    "activation": ("relu", "relu, tanh, sigmoid or identity"),
    "partition": ("dirichlet", "iid, dirichlet (label skew) or quantity (size skew)"),
    "alpha": (0.5, "Dirichlet concentration of the label or quantity skew"),
    "clients": (100, "number of clients"),
    "fraction": (0.2, "share of the clients sampled each round"),
    "clients_per_round": (None, "clients sampled each round (overrides fraction)"),
    "rounds": (30, "rounds in all (a resumed run continues to this many)"),
    "epochs": (5, "local epochs per round"),
    "batch_size": (16, "local mini-batch size"),
    "lr": (0.1, "local learning rate"),
    "momentum": (0.9, "local momentum"),
    "prox_mu": (0.0, "FedProx proximal term"),
    "aggregator": ("fedavg", "one of " + ", ".join(rules.names())),
    "aggregator_options": ({}, "options of the aggregator, KEY=VALUE (e.g. beta=0.2)"),
    "server": ("none", "server optimizer: " + ", ".join(OPTIMIZERS)),
    "server_options": ({}, "options of the server optimizer, KEY=VALUE (e.g. lr=0.5)"),
    "dropout": (0.0, "probability that a sampled client never reports back"),
    "straggler": (0.0, "probability that a client completes only part of its local steps"),
    "straggler_work": (0.5, "share of the local steps a straggler completes"),
    "malicious": (0.0, "share of the clients that send corrupted updates"),
    "attack": ("sign_flip", "what malicious clients send: nan, scale or sign_flip"),
    "attack_scale": (4.0, "factor of the scale and sign_flip attacks"),
    "seed": (0, "seeds data split, partition, initial model, sampling, faults, shuffling"),
    "eval_every": (1, "evaluate on the test split every this many rounds"),
    "out": ("fastmb-run", "output folder: history.csv/.json, summary.json, history.png, "
            "checkpoint.npz"),
    "resume": (False, "continue from OUT/checkpoint.npz if it exists"),
    "split_at": (None, "split learning: the clients hold the MLP's layers [0, C), the server "
                 "the rest; each round is a SplitFed round beside the FedAvg run"),
    "splitfed": (1, "with --split-at: SplitFed version 1 (a server copy per client) or 2 "
                 "(one server copy, clients in sequence)"),
    "microbatches": (1, "with --split-at: micro-batches per mini-batch through the cut"),
    "schedule": ("gpipe", "with --split-at: the micro-batches' pipeline, gpipe or 1f1b"),
    "rates": ([1.0], "width slices: the devices' width rates, e.g. 1,0.5,0.25 (HeteroFL); "
              "each round then runs at these widths beside FedAvg on the full-width clients"),
    "rate_mix": ([1.0], "the share of the clients at each rate, e.g. 0.2,0.3,0.5"),
    "rolling": (False, "with --rates: FedRolex's rolling window of units instead of the "
                "first ones"),
    "secure": (None, "secure aggregation of the FedAvg rounds: secagg (every client a neighbour "
               "of every other) or secagg+ (each of k ~ 4 log2 N neighbours); reported beside "
               "plain FedAvg with the same seed"),
    "threshold": (None, "with --secure: shares that recover a client's secrets (default "
                  "k // 2 + 1)"),
    "neighbours": (None, "with --secure secagg+: neighbours of each client (default "
                   "4 ceil(log2 N))"),
    "secure_clip": (1.0, "with --secure: updates are clipped to [-C, C] before quantizing"),
    "secure_bits": (16, "with --secure: quantization levels 2**B"),
    "secure_signed": (False, "with --secure: clients sign their keys and the list of "
                      "survivors (against a server that substitutes keys or tells clients "
                      "different stories about who dropped)"),
    "setup_dropout": (0.0, "with --secure: probability that a client drops while keys are "
                      "set up"),
    "unmask_dropout": (0.0, "with --secure: probability that a client does not answer the "
                       "unmasking request"),
    "scheduler": (None, "address of a Dask scheduler (tcp://host:8786) to shard clients on"),
    "workers": (0, "start a Dask LocalCluster with this many worker processes"),
    "plot": (True, "write history.png (matplotlib)"),
    "progress": (True, "show a progress bar (on stderr; the per-round lines go to stdout)"),
}


class ConfigError(ValueError):
    """A bad setting: the message names it and what was expected."""


def add_arguments(parser):
    parser.add_argument("--config", metavar="FILE.toml", help="read settings from a TOML file "
                        "(flags given here override it)")
    for name, (default, help_) in SETTINGS.items():
        flag = "--" + name.replace("_", "-")
        shown = f" (default: {_show(default)})"
        if isinstance(default, bool):
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=help_ + shown)
        elif name in ("aggregator_options", "server_options"):
            parser.add_argument(flag.rstrip("s"), dest=name, action="append",
                                metavar="KEY=VALUE", default=argparse.SUPPRESS, help=help_)
        else:
            parser.add_argument(flag, dest=name, default=argparse.SUPPRESS, metavar="V",
                                help=help_ + shown)


def _show(v):
    return ",".join(map(str, v)) if isinstance(v, list) else v


def _suggest(key, valid):
    close = difflib.get_close_matches(key, valid, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def read_toml(path):
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} does not exist")
    with open(path, "rb") as fh:
        try:
            cfg = tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path!r} is not valid TOML: {exc}") from None
    for key in cfg:
        if key not in SETTINGS:
            raise ConfigError(f"unknown key {key!r} in {path}{_suggest(key, SETTINGS)}; valid "
                              f"keys: {', '.join(SETTINGS)}")
    return cfg


def _convert(name, value):
    """A flag's text (or a TOML value) as the setting's type, strictly: a TOML ``true`` is
    not an integer, 2.5 is not a client count and 64.9 not a layer width."""
    default = SETTINGS[name][0]
    try:
        if name in ("aggregator_options", "server_options"):
            if isinstance(value, dict):
                return dict(value)
            if isinstance(value, str) or not isinstance(value, list):
                raise ValueError("expected a table of options or KEY=VALUE items")
            out = {}
            for item in value:
                if not isinstance(item, str) or "=" not in item:
                    raise ValueError(f"expected KEY=VALUE, got {item!r}")
                k, v = item.split("=", 1)
                out[k.strip()] = _scalar(v.strip())
            return out
        if name in ("rates", "rate_mix"):
            return [_real(v) for v in _items(value, "numbers")]
        if name == "hidden":
            return [_integer(v) for v in _items(value, "layer widths")]
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise ValueError("expected true or false")
            return value
        if name in ("clients_per_round", "split_at", "threshold", "neighbours"):
            return None if value is None else _integer(value)
        if name == "secure":
            return None if value in (None, "", "none") else _text(value)
        if name == "scheduler":
            if value in (None, ""):
                return None
            return _text(value)
        if isinstance(default, int):
            return _integer(value)
        if isinstance(default, float):
            return _real(value)
        return _text(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name}: {exc}" if "expected" in str(exc) else
                          f"{name}: cannot read {value!r} as {type(default).__name__}") from None


def _items(value, what):
    """A list setting's items: a TOML list, one value, or a flag's comma-separated text."""
    items = value if isinstance(value, list) else (
        [value] if not isinstance(value, str) else
        [v.strip() for v in value.split(",") if v.strip()])
    if not items:
        raise ValueError(f"expected one or more {what}")
    return items


def _integer(value):
    """An int from a TOML integer or a flag's text; booleans and floats are refused."""
    if isinstance(value, str):
        return int(value.strip())  # a ValueError here reads "cannot read ... as int"
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected an integer, got {value!r}")
    return value


def _real(value):
    """A float from a TOML number or a flag's text; booleans are refused."""
    if isinstance(value, str):
        return float(value.strip())
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected a number, got {value!r}")
    return float(value)


def _text(value):
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


def _scalar(text):
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def settings(args):
    """Defaults, then the TOML file, then the flags: one dict of checked settings."""
    cfg = {k: v for k, (v, _) in SETTINGS.items()}
    given = vars(args).copy()
    path = given.pop("config", None)
    given.pop("command", None)
    if path:
        for k, v in read_toml(path).items():
            cfg[k] = _convert(k, v)
    for k, v in given.items():
        cfg[k] = _convert(k, v)
    # The command's own settings (the library checks the rest where it uses them).
    if cfg["rounds"] < 1:
        raise ConfigError(f"rounds must be >= 1, got {cfg['rounds']}")
    if cfg["workers"] < 0:
        raise ConfigError(f"workers must be >= 0, got {cfg['workers']}")
    if not cfg["out"]:
        raise ConfigError("out must name a folder")
    if cfg["task"] not in TASKS:
        raise ConfigError(f"task must be one of {', '.join(TASKS)}, got {cfg['task']!r}")
    if cfg["splitfed"] not in (1, 2):
        raise ConfigError(f"splitfed must be 1 or 2, got {cfg['splitfed']}")
    if cfg["microbatches"] < 1 or cfg["batch_size"] % cfg["microbatches"]:
        raise ConfigError(f"microbatches must be >= 1 and divide batch_size="
                          f"{cfg['batch_size']}, got {cfg['microbatches']}")
    rates, mix = cfg["rates"], cfg["rate_mix"]
    if cfg["rates"] != [1.0]:
        if len(mix) != len(rates):
            raise ConfigError(f"rate_mix needs one share per rate ({len(rates)}), got "
                              f"{len(mix)}")
        if any(not 0 < r <= 1 for r in rates) or any(m < 0 for m in mix) or sum(mix) <= 0:
            raise ConfigError("rates must lie in (0, 1] and rate_mix be non-negative shares "
                              f"with a positive sum, got {rates} and {mix}")
        if 1.0 not in rates:
            raise ConfigError("rates must include 1 (the full model the strong clients train)")
    if cfg["secure"] not in (None, "secagg", "secagg+"):
        raise ConfigError(f"secure must be secagg or secagg+, got {cfg['secure']!r}")
    if cfg["secure"] and (cfg["split_at"] is not None or cfg["rates"] != [1.0]):
        raise ConfigError("secure runs with FedAvg rounds, not with --split-at or --rates")
    if cfg["schedule"] not in ("gpipe", "1f1b"):
        raise ConfigError(f"schedule must be gpipe or 1f1b, got {cfg['schedule']!r}")
    return cfg


def load_data(cfg):
    name = cfg["data"]
    if name == "digits":
        return D.digits(seed=cfg["seed"])
    if name == "synthetic":
        return D.synthetic(cfg["n_samples"], cfg["n_features"], cfg["n_classes"],
                           seed=cfg["seed"])
    if not os.path.splitext(name)[1]:
        raise ConfigError(f"data must be digits, synthetic or a .npz/.npy/.csv file, got "
                          f"{name!r}")
    return D.load(name, test_fraction=cfg["test_fraction"], seed=cfg["seed"], task=cfg["task"])


def build(cfg, executor=None):
    """The model, data, partition and Simulation that ``cfg`` describes."""
    data = load_data(cfg)
    d = data.X.shape[1]
    C = data.n_classes
    loss = "softmax" if C else "squared"
    if C == 1:
        raise ConfigError("the labels hold one class only; classification needs two or more")
    out = C if C else 1
    if cfg["model"] == "linear":
        model = Linear(d, out, loss=loss)
    elif cfg["model"] == "mlp":
        model = MLP([d, *cfg["hidden"], out], activation=cfg["activation"], loss=loss)
    else:
        raise ConfigError(f"model must be mlp or linear, got {cfg['model']!r}")
    if cfg["partition"] == "dirichlet" and not C:
        raise ConfigError("partition 'dirichlet' skews labels and needs class labels; the "
                          "data has regression targets (use iid or quantity)")
    part = Pt.make(cfg["partition"], data.y, cfg["clients"], alpha=cfg["alpha"],
                   seed=cfg["seed"])
    faults = Faults(dropout=cfg["dropout"], straggler=cfg["straggler"],
                    straggler_work=cfg["straggler_work"], malicious=cfg["malicious"],
                    attack=cfg["attack"], attack_scale=cfg["attack_scale"],
                    setup_dropout=cfg["setup_dropout"], unmask_dropout=cfg["unmask_dropout"])
    sim = Simulation(model, data, part, clients_per_round=cfg["clients_per_round"],
                     fraction=cfg["fraction"], epochs=cfg["epochs"],
                     batch_size=cfg["batch_size"], lr=cfg["lr"], momentum=cfg["momentum"],
                     prox_mu=cfg["prox_mu"], aggregator=cfg["aggregator"],
                     aggregator_options=cfg["aggregator_options"], server=cfg["server"],
                     server_options=cfg["server_options"], faults=faults, seed=cfg["seed"],
                     eval_every=cfg["eval_every"], executor=executor,
                     secure=_secure_config(cfg, part))
    return data, part, sim


def _secure_config(cfg, part):
    """The SecAggConfig of ``--secure`` (None without): the largest client's example count
    is the largest weight, and the group is Z/2**32 unless that could wrap (then 2**64)."""
    if cfg["secure"] is None:
        return None
    kw = dict(clip=cfg["secure_clip"], bits=cfg["secure_bits"], max_weight=int(
        part.sizes.max()), neighbours=cfg["neighbours"], threshold=cfg["threshold"],
              complete=cfg["secure"] == "secagg", signed=cfg["secure_signed"])
    n = cfg["clients_per_round"] or max(1, round(cfg["fraction"] * part.n_clients))
    try:
        narrow = SecAggConfig(**kw)
        if n <= narrow.quantizer.largest_safe_clients():
            return narrow
    except ValueError:
        pass
    return SecAggConfig(modulus_bits=64, **kw)


def _executor(cfg):
    if cfg["scheduler"] or cfg["workers"]:
        if cfg["scheduler"]:
            return DaskExecutor(address=cfg["scheduler"])
        return DaskExecutor(n_workers=cfg["workers"])
    return None


def _fmt_bytes(n):
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1000


class CompileNotice(numba_event.Listener):
    """Says on ``stream``, once, that Numba is compiling kernels (a cold cache: the first
    run on a machine), with a spinner and the seconds spent while it lasts (``spin``; a
    stream that is not a terminal gets one line at the start and one at the end).

    It listens to Numba's ``numba:compile`` events, which fire only when a kernel is
    really compiled, not when it is loaded from the on-disk cache: a warm run says nothing.
    """

    FRAMES = "|/-\\"

    def __init__(self, stream, spin=True, on_cold=None):
        self.stream, self.spin = stream, spin and stream.isatty()
        self.on_cold = on_cold  # called once, at the first compile
        self.t0 = None
        self.done = threading.Event()
        self.thread = None

    def on_start(self, event):
        if self.t0 is not None or self.done.is_set():
            return
        self.t0 = time.perf_counter()
        if self.on_cold is not None:
            self.on_cold()
        if self.spin:
            self.thread = threading.Thread(target=self._spin, daemon=True)
            self.thread.start()
        else:
            print("compiling kernels (first run only; cached for later runs) ...",
                  file=self.stream, flush=True)

    def on_end(self, event):
        pass

    def _spin(self):
        i = 0
        while not self.done.wait(0.125):
            self.stream.write(f"\r{self.FRAMES[i % 4]} compiling kernels (first run only; "
                              f"cached for later runs) {time.perf_counter() - self.t0:4.0f} s")
            self.stream.flush()
            i += 1

    def stop(self):
        """End the notice (at the end of the first round): later compiles stay silent."""
        if self.done.is_set():
            return
        self.done.set()
        if self.t0 is None:
            return
        if self.thread is not None:
            self.thread.join()
            self.stream.write("\r\033[K")
        print(f"compiled kernels in {time.perf_counter() - self.t0:.1f} s (cached: later runs "
              "start warm)", file=self.stream, flush=True)


def round_line(h, rounds):
    acc = "   -  " if h["accuracy"] is None else f"{h['accuracy']:.4f}"
    loss = "   -  " if h["loss"] is None else f"{h['loss']:.4f}"
    faults = ""
    for key in ("dropped", "stragglers", "malicious", "rejected", "rejected_by_rule"):
        if h[key]:
            faults += f"  {key.replace('_', ' ')} {len(h[key])}"
    return (f"round {h['round']:>{len(str(rounds))}}/{rounds}  acc {acc}  loss {loss}  "
            f"{h['time_s'] * 1e3:7.1f} ms  clients {h['reported']}/{h['sampled']}  "
            f"up {_fmt_bytes(h['bytes_up'])}{faults}")


def write_history(history, folder):
    keys = list(history[0]) if history else []
    with open(os.path.join(folder, "history.json"), "w") as fh:
        json.dump(history, fh, indent=1)
    with open(os.path.join(folder, "history.csv"), "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(keys)
        for h in history:
            w.writerow([" ".join(map(str, v)) if isinstance(v, list) else
                        ("" if v is None else v) for v in (h[k] for k in keys)])


class Plotter:
    """``history.png``, drawn by a helper process (``_plot.py``) started with the run, so
    that importing matplotlib overlaps the rounds instead of following them: a warm default
    run took 2.5 s with the plot drawn here at the end."""

    SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_plot.py")

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, self.SCRIPT], stdin=subprocess.PIPE,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True)

    def plot(self, history, path, title):
        """Send the history and wait for the plot; raise with the helper's error if any."""
        job = {"history": history, "path": path, "title": title}
        _, err = self.proc.communicate(json.dumps(job, default=str))
        if self.proc.returncode:
            last = err.strip().splitlines()[-1] if err.strip() else ""
            if "ModuleNotFoundError" in last:
                raise ImportError(f"the plot needs matplotlib (pip install 'fastmb[sim]', or "
                                  f"--no-plot): {last}")
            raise RuntimeError(f"drawing {path} failed: {last}")

    def cancel(self):
        if self.proc.poll() is None:
            self.proc.communicate("null")


class Prewarm:
    """The helper process of :mod:`fastmb.cli._prewarm`, started by :meth:`start` (on the
    first compile of a cold run) and stopped with the run. On the 2-core machine it took
    the evaluation and aggregation kernels (4-5 s of compiling) off the first round."""

    def __init__(self, sim, data):
        self.sim, self.data = sim, data
        self.proc = None

    def start(self):
        if self.proc is not None:
            return
        # The job is made here, not with the run: a warm run never needs it.
        sim, data = self.sim, self.data
        job = pickle.dumps((sim.model, sim.params.dtype, data.X_test.dtype, data.y_test.dtype,
                            data.y_test.shape[1:], V.is_sparse(data.X_test)))
        try:
            self.proc = subprocess.Popen([sys.executable, "-m", "fastmb.cli._prewarm"],
                                         stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL)
            self.proc.stdin.write(job)
            self.proc.stdin.close()
        except OSError:
            # It runs inside Numba's compile event: a helper that cannot start (or dies at
            # once) only means the main process compiles everything itself.
            pass

    def stop(self):
        """Stop the helper if it still runs (a short run can finish first); the cache files
        it wrote are complete, since Numba writes each one atomically."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait()


def run(args, echo=print):
    cfg = settings(args)
    t0 = time.perf_counter()
    folder = cfg["out"]
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise ConfigError(f"out: {folder!r} exists and is not a folder")
    os.makedirs(folder, exist_ok=True)
    lock = _lock(folder)
    try:
        return _run(cfg, folder, t0, echo)
    finally:
        lock.release()


def _lock(folder):
    """An exclusive lock on the output folder for the whole run: a second ``fastmb
    simulate`` writing there would interleave checkpoints and overwrite results. The lock
    is the operating system's (flock, LockFileEx), so a killed run leaves none behind."""
    from filelock import FileLock, Timeout

    path = os.path.join(folder, LOCK_FILE)
    lock = FileLock(path, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise ConfigError(f"out: another fastmb simulate is writing to {folder!r} (it holds "
                          f"{path}); wait for it to finish or choose another --out") from None
    return lock


#: The lock file a run holds in its output folder.
LOCK_FILE = ".fastmb.lock"


def _run(cfg, folder, t0, echo):
    if cfg["split_at"] is not None:
        return _run_split(cfg, folder, t0, echo)
    if cfg["rates"] != [1.0]:
        return _run_width(cfg, folder, t0, echo)
    executor = _executor(cfg)
    plotter = Plotter() if cfg["plot"] else None
    try:
        data, part, sim = build(cfg, executor)
        ckpt = os.path.join(folder, "checkpoint.npz")
        if cfg["resume"] and os.path.exists(ckpt):
            sim.load(ckpt)
            echo(f"resumed from {ckpt} after round {sim.round}")
        where = executor.describe() if executor is not None else "this process"
        echo(f"fastmb simulate: {data!r}; {sim.model!r} ({sim.model.n_params} parameters)\n"
             f"  {part.n_clients} clients, {cfg['partition']} partition"
             f"{' alpha ' + str(cfg['alpha']) if cfg['partition'] != 'iid' else ''}, "
             f"{sim.clients_per_round} per round, {cfg['epochs']} local epoch(s) of batch "
             f"{cfg['batch_size']}, lr {cfg['lr']}; aggregator {cfg['aggregator']}, server "
             f"{cfg['server']}; runs in {where}")
        rounds = cfg["rounds"]
        bar = None
        # In-process runs only: with Dask the aggregation runs in the workers.
        prewarm = Prewarm(sim, data) if executor is None else None
        notice = CompileNotice(sys.stderr, spin=cfg["progress"],
                               on_cold=prewarm.start if prewarm is not None else None)

        def on_round(h):
            nonlocal bar
            notice.stop()
            line = round_line(h, rounds)
            if bar is not None:
                bar.write(line, file=sys.stdout)
                bar.update(1)
                return
            echo(line)
            if cfg["progress"] and sim.round < rounds:
                # Started after this process's first round, so that its estimate leaves
                # out the first round's compiling (or loading) of kernels.
                from tqdm.auto import tqdm

                bar = tqdm(total=rounds, initial=sim.round, unit="round", leave=False,
                           file=sys.stderr, dynamic_ncols=True)

        try:
            with numba_event.install_listener("numba:compile", notice):
                history = sim.run(rounds, checkpoint=ckpt, callback=on_round)
        finally:
            notice.stop()
            if prewarm is not None:
                prewarm.stop()
            if bar is not None:
                bar.close()
        write_history(history, folder)
        s = summary(history)
        s["wall_s"] = time.perf_counter() - t0
        s["settings"] = cfg
        if sim.secure is not None:
            _report_secure(cfg, sim, s, echo)
        with open(os.path.join(folder, "summary.json"), "w") as fh:
            json.dump(s, fh, indent=1, default=str)
        if plotter is not None:
            plotter.plot(history, os.path.join(folder, "history.png"),
                         f"{data.name}: {sim.model!r}, {part.n_clients} clients, "
                         f"{cfg['aggregator']}")
            plotter = None
        acc = s["final_accuracy"]
        echo(f"done: {s['rounds']} rounds in {s['wall_s']:.1f} s wall "
             f"(median {s['median_round_s'] * 1e3:.1f} ms a round); final test "
             + (f"accuracy {acc:.4f} (best {s['best_accuracy']:.4f}), " if acc is not None else "")
             + f"loss {s['final_loss']:.4f}; sent up {_fmt_bytes(s['bytes_up'])}, down "
             f"{_fmt_bytes(s['bytes_down'])}; {s['dropped']} dropped, {s['rejected']} rejected\n"
             f"  wrote {folder}/history.csv, history.json, summary.json"
             + (", history.png" if cfg["plot"] else "") + ", checkpoint.npz")
        return 0
    finally:
        if plotter is not None:
            plotter.cancel()
        if executor is not None:
            executor.close()


def _report_secure(cfg, sim, s, echo):
    """With ``--secure``: the protocol's settings, its failed rounds, and plain FedAvg run
    with the same seed (no setup or unmasking dropouts) for comparison."""
    sc = sim.secure
    n = sim.clients_per_round
    echo(f"  secure aggregation ({cfg['secure']}{', signed' if sc.signed else ''}): "
         f"{sc.degree(n)} neighbours, threshold "
         f"{sc.threshold_for(n)}, updates clipped to +-{sc.clip}, {sc.bits}-bit levels in "
         f"Z/2**{sc.modulus_bits} (mean within {sc.quantizer.error:.2e} of FedAvg's)")
    for r, why in sim.secure_failures:
        echo(f"  round {r} failed: {why}")
    plain_cfg = dict(cfg, secure=None, setup_dropout=0.0, unmask_dropout=0.0)
    _, _, plain = build(plain_cfg)
    hist = plain.run(sim.round)
    acc, base = s["final_accuracy"], hist[-1]["accuracy"]
    if acc is not None and base is not None:
        median = np.median([h["time_s"] for h in hist]) * 1e3
        echo(f"  plain FedAvg, same seed: final accuracy {base:.4f} (secure: {acc:.4f}, "
             f"{acc - base:+.4f}); median round {median:.1f} ms")
    s["plain_fedavg_accuracy"] = base
    s["secure_failures"] = [list(f) for f in sim.secure_failures]


def _run_split(cfg, folder, t0, echo):
    """``--split-at C``: the default job as SplitFed rounds (the clients hold layers
    ``[0, C)``), after the same job as FedAvg rounds, with the bytes each sends and the
    pipeline's timeline of one client's epoch."""
    data, part, sim = _sliced_build(cfg, "split_at")
    model = sim.model
    try:
        cut = check_cut(model, cfg["split_at"], "split_at")
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from None
    p0 = sim.params
    rounds = cfg["rounds"]
    echo(f"fastmb simulate --split-at {cut}: {data!r}; {model!r}; {part.n_clients} clients, "
         f"{sim.clients_per_round} per round, {rounds} rounds; SplitFed V{cfg['splitfed']} "
         f"beside FedAvg")
    fed = summary(sim.run(rounds))
    echo(f"  FedAvg:     accuracy {fed['final_accuracy']:.4f}, sent up "
         f"{_fmt_bytes(fed['bytes_up'])}, down {_fmt_bytes(fed['bytes_down'])}")
    # SplitFed on the clients' rows laid out contiguously (clients without rows left out)
    keep, X, y, offsets = _client_layout(part, data)
    params = p0
    up = down = 0
    rng = np.random.default_rng(np.random.SeedSequence([cfg["seed"], 0x5F1]))
    n_round = min(sim.clients_per_round, keep.shape[0])
    history = []
    for r in range(rounds):
        ids = np.sort(rng.choice(keep.shape[0], n_round, replace=False))
        res = splitfed(model, params, X, y, offsets, cut, version=cfg["splitfed"], clients=ids,
                       epochs=cfg["epochs"], batch_size=cfg["batch_size"], lr=cfg["lr"],
                       momentum=cfg["momentum"], prox_mu=cfg["prox_mu"], seed=cfg["seed"] + r)
        params, up, down = res.params, up + res.bytes_up, down + res.bytes_down
        ev = evaluate(model, params, data.X_test, data.y_test)
        history.append({"round": r + 1, "accuracy": ev["accuracy"], "loss": ev["loss"],
                        "bytes_up": res.bytes_up, "bytes_down": res.bytes_down})
        echo(f"  SplitFed round {r + 1:>3}/{rounds}: accuracy {ev['accuracy']:.4f}, loss "
             f"{ev['loss']:.4f}")
    k0 = int(keep[0])
    one = split_sgd(model, p0, X[offsets[0]:offsets[1]], y[offsets[0]:offsets[1]], cut,
                    batch_size=cfg["batch_size"], lr=cfg["lr"], momentum=cfg["momentum"],
                    microbatches=cfg["microbatches"], pipeline=cfg["schedule"])
    tl = one.timeline
    acc = history[-1]["accuracy"]
    echo(f"  SplitFed:   accuracy {acc:.4f}, sent up {_fmt_bytes(up)}, down "
         f"{_fmt_bytes(down)}\n"
         f"  pipeline of client {k0}'s epoch ({cfg['microbatches']} micro-batch(es), "
         f"{cfg['schedule']}): {tl.makespan * 1e3:.3f} ms a mini-batch on the measured "
         f"speeds, idle {tl.idle_fraction:.0%}, activations held at the peak "
         f"{', '.join(_fmt_bytes(int(b)) for b in tl.activation_bytes)} (client, server)")
    out = {"fedavg": fed, "splitfed": {"final_accuracy": acc, "bytes_up": up,
                                       "bytes_down": down, "history": history},
           "timeline": {"makespan_s": tl.makespan, "idle_fraction": tl.idle_fraction,
                        "peak_micro": tl.peak_micro.tolist(),
                        "activation_bytes": tl.activation_bytes.tolist()},
           "wall_s": time.perf_counter() - t0, "settings": cfg}
    with open(os.path.join(folder, "summary.json"), "w") as fh:
        json.dump(out, fh, indent=1, default=str)
    echo(f"  wrote {folder}/summary.json")
    return 0


def _sliced_build(cfg, setting):
    """:func:`build` for the slicing runs, which need an MLP and run in this process."""
    if cfg["scheduler"] or cfg["workers"]:
        raise ConfigError(f"{setting} runs in this process; drop scheduler and workers")
    if cfg["model"] != "mlp" or not cfg["hidden"]:
        raise ConfigError(f"{setting} needs model mlp with at least one hidden layer")
    return build(cfg)


def _client_layout(part, data):
    """The clients with rows, their rows laid out contiguously: ``(keep, X, y, offsets)``."""
    sizes = np.diff(part.offsets)
    keep = np.flatnonzero(sizes > 0)
    rows = np.concatenate([part.client_rows(k) for k in keep])
    return keep, data.X[rows], data.y[rows], np.concatenate([[0], np.cumsum(sizes[keep])])


def _run_width(cfg, folder, t0, echo):
    """``--rates``: heterogeneous devices. Each client gets a width rate by ``rate_mix``;
    each round its sampled clients train their sub-models (HeteroFL, or FedRolex's window
    with ``--rolling``) and the server averages each parameter over its holders. Beside it,
    FedAvg trains the full model on the same rounds' full-width clients only."""
    data, part, sim = _sliced_build(cfg, "rates")
    model = sim.model
    p0 = sim.params
    keep, X, y, offsets = _client_layout(part, data)
    K = keep.shape[0]
    rng = np.random.default_rng(np.random.SeedSequence([cfg["seed"], 0x3D7]))
    mix = np.asarray(cfg["rate_mix"], np.float64)
    client_rate = np.asarray(cfg["rates"])[rng.choice(len(mix), K, p=mix / mix.sum())]
    n_round = min(sim.clients_per_round, K)
    rows = np.diff(offsets)
    rounds = cfg["rounds"]
    echo(f"fastmb simulate --rates {','.join(map(str, cfg['rates']))}: {data!r}; {model!r}; "
         f"{K} clients ("
         + ", ".join(f"{int((client_rate == r).sum())} at {r}" for r in cfg["rates"])
         + f"), {n_round} per round, {rounds} rounds, "
         + ("FedRolex (rolling window)" if cfg["rolling"] else "HeteroFL (first units)"))
    opts = dict(epochs=cfg["epochs"], batch_size=cfg["batch_size"], lr=cfg["lr"],
                momentum=cfg["momentum"], prox_mu=cfg["prox_mu"])
    hetero, full_only = p0, p0
    for r in range(rounds):
        ids = np.sort(rng.choice(K, n_round, replace=False))
        shift = r if cfg["rolling"] else 0
        agg = WidthMean(model)
        agg.add_all(train_width_clients(model, hetero, X, y, offsets, client_rate, shift=shift,
                                        clients=ids, seed=cfg["seed"] + r, **opts),
                    rows[ids])
        hetero = agg.result(hetero)
        strong = ids[client_rate[ids] == 1.0]
        if strong.size:
            U = train_clients(model, full_only, X, y, offsets, clients=strong,
                              seed=cfg["seed"] + r, **opts)
            full_only = fedavg(U, weights=rows[strong].astype(np.float64))
        acc = evaluate(model, hetero, data.X_test, data.y_test)["accuracy"]
        echo(f"  round {r + 1:>3}/{rounds}: full-width accuracy {acc:.4f}")
    per_rate = {str(r): evaluate_width(model, hetero, data.X_test, data.y_test, r)["accuracy"]
                for r in cfg["rates"]}
    base = evaluate(model, full_only, data.X_test, data.y_test)["accuracy"]
    echo("  accuracy by width: " + ", ".join(
        f"{r}: {a:.4f} ({multiply_adds(model, float(r)):,} multiply-adds)"
        for r, a in per_rate.items())
        + f"\n  FedAvg on the {int((client_rate == 1.0).sum())} full-width clients only: "
        f"{base:.4f}")
    out = {"accuracy_by_rate": per_rate, "fedavg_full_width_only": base,
           "client_rates": {str(r): int((client_rate == r).sum()) for r in cfg["rates"]},
           "wall_s": time.perf_counter() - t0, "settings": cfg}
    with open(os.path.join(folder, "summary.json"), "w") as fh:
        json.dump(out, fh, indent=1, default=str)
    echo(f"  wrote {folder}/summary.json")
    return 0
