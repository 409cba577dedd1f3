"""The command line: `fastmb bench` runs end to end on tiny sizes and writes its JSON and
its Markdown table."""

import json
import os
import subprocess
import sys

import pytest

from fastmb.cli import main


def test_bench_tiny(tmp_path, capsys):
    out, md = tmp_path / "bench.json", tmp_path / "bench.md"
    assert main(["bench", "--quick", "--scale", "0.002", "--json", str(out), "--markdown",
                 str(md)]) == 0
    text = capsys.readouterr().out
    assert "memory bandwidth" in text and "fedavg" in text and "per-sample grad" in text
    data = json.loads(out.read_text())
    assert data["bandwidth_GBps"] > 0
    assert {r["kernel"] for r in data["rows"]} >= {"fedavg", "per-sample grad, logistic",
                                                    "SGD epoch, logistic", "per-sample grad, MLP"}
    assert all(r["fastmb_s"] > 0 for r in data["rows"])
    # the Markdown table: the machine, then one line per row
    table = md.read_text().splitlines()
    assert table[0].startswith("Measured on ") and data["machine"] in table[0]
    body = [line for line in table if line.startswith("| ") and "---" not in line]
    assert len(body) == 1 + len(data["rows"])
    assert any(line.startswith("| fedavg | ") and line.endswith("% |") for line in body)


def test_module_entry_point_and_errors():
    res = subprocess.run([sys.executable, "-m", "fastmb", "bench", "--help"], capture_output=True,
                         text=True)
    assert res.returncode == 0 and "--quick" in res.stdout
    with pytest.raises(SystemExit):
        main(["bench", "--scale", "-1"])
    with pytest.raises(SystemExit):
        main(["frobnicate"])


def test_compile_notice_speaks_only_when_numba_compiles():
    import io

    import numba
    from numba.core import event

    from fastmb.cli.simulate import CompileNotice

    quiet = io.StringIO()
    notice = CompileNotice(quiet, spin=True)  # not a terminal: no spinner, plain lines
    with event.install_listener("numba:compile", notice):
        sum(range(3))  # nothing compiles (a warm run: kernels load from the cache)
    notice.stop()
    assert quiet.getvalue() == ""

    loud = io.StringIO()
    notice = CompileNotice(loud, spin=True)
    with event.install_listener("numba:compile", notice):
        assert numba.njit(lambda x: x + 1)(1) == 2  # a real compile, two events
        assert numba.njit(lambda x: x - 1)(1) == 0
    notice.stop()
    notice.stop()
    lines = loud.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("compiling kernels (first run only")
    assert lines[1].startswith("compiled kernels in ")


_SIM = """
import numpy as np, fastmb
data = fastmb.data.digits(shuffle=False)
model = fastmb.MLP([64, 16, 10])
sim = fastmb.Simulation(model, data, fastmb.partition.iid(1500, 5, seed=0), clients_per_round=5)
"""

_PREWARM = _SIM + """
from fastmb.cli.simulate import Prewarm
helper = Prewarm(sim, data)
helper.start()
assert helper.proc.wait() == 0
"""

_CHECK = _SIM + """
from numba.core import event
from fastmb.federation.rounds import shard_sum
compiled = []
class Listener(event.Listener):
    def on_start(self, ev):
        compiled.append(ev.data["dispatcher"].py_func.__qualname__)
    def on_end(self, ev):
        pass
with event.install_listener("numba:compile", Listener()):
    sim.evaluate()
    shard_sum(np.zeros((3, model.n_params), sim.params.dtype), np.ones(3), np.arange(3))
print("compiled:", sorted(set(compiled)))
"""


def test_prewarm_compiles_what_a_round_then_loads(tmp_path):
    """A cold ``fastmb simulate`` starts the helper of ``fastmb.cli._prewarm`` on its first
    compile. The helper must compile exactly the kernels (and argument types) that the
    simulation's evaluation and FedAvg sum use: after it ran in an empty cache, another
    process doing both compiles nothing."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-c", _PREWARM], env=env, check=True, cwd=tmp_path)
    out = subprocess.run([sys.executable, "-c", _CHECK], env=env, check=True, cwd=tmp_path,
                         capture_output=True, text=True).stdout
    assert "compiled: []" in out, out
