"""Deliberately faulty oracles for the learner's fault-handling tests (importable by workers)."""

from __future__ import annotations

import time

import numpy as np
from ase.calculators.calculator import Calculator, FileIOCalculator, all_changes
from ase.calculators.emt import EMT


class FlakyEMT(EMT):
    """EMT that raises on every ``fail_every``-th call."""

    def __init__(self, fail_every: int = 3, **kwargs):
        super().__init__(**kwargs)
        self.fail_every = fail_every
        self.n = 0

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        self.n += 1
        if self.n % self.fail_every == 0:
            raise RuntimeError("SCF did not converge (simulated)")
        super().calculate(atoms, properties, system_changes)


class NaNCalculator(Calculator):
    """Returns NaN energies and forces: a silently broken reference code."""

    implemented_properties = ["energy", "forces", "stress"]

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        n = len(self.atoms)
        self.results = {"energy": np.nan, "forces": np.full((n, 3), np.nan), "stress": np.full(6, np.nan)}


class SlowEMT(EMT):
    """EMT that hangs for ``delay`` seconds first."""

    def __init__(self, delay: float = 30.0, **kwargs):
        super().__init__(**kwargs)
        self.delay = delay

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        time.sleep(self.delay)
        super().calculate(atoms, properties, system_changes)


class ThreadProbe(EMT):
    """EMT whose ``energy`` is the largest BLAS thread count in force during ``calculate``."""

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        from threadpoolctl import threadpool_info

        super().calculate(atoms, properties, system_changes)
        blas = [d["num_threads"] for d in threadpool_info() if d["user_api"] == "blas"]
        self.results["energy"] = self.results["free_energy"] = float(max(blas, default=0))


class NoStressEMT(Calculator):
    """EMT energies and forces from a calculator that implements no stress (as many do)."""

    implemented_properties = ["energy", "forces"]

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        a = self.atoms.copy()
        a.calc = EMT()
        self.results = {"energy": a.get_potential_energy(), "forces": a.get_forces()}


class StrictEMT(EMT):
    """EMT whose constructor takes no unknown keyword (as most calculators' do not)."""

    def __init__(self, *, label=None):
        super().__init__(label=label)


class MomentProbe(EMT):
    """EMT whose ``energy`` is ``sum(initial magnetic moments) + 100 sum(initial charges)``
    of the frame it was given: what a spin-polarised or charged reference starts from."""

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.results["energy"] = self.results["free_energy"] = float(
            atoms.get_initial_magnetic_moments().sum() + 100 * atoms.get_initial_charges().sum())


class DiesOnMovedFrames(EMT):
    """EMT whose process ends at once (as a segfaulting or out-of-memory-killed DFT code)
    on frames whose first atom is not at the origin."""

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        import os

        if abs(atoms.positions[0]).max() > 1e-3:
            os._exit(139)
        super().calculate(atoms, properties, system_changes)


class ShortForcesEMT(EMT):
    """EMT whose every third result lacks the last atom's force (a parser that dropped a line)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.n = 0

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.n += 1
        if self.n % 3 == 0:
            self.results["forces"] = self.results["forces"][:-1]


class SlowWhenMarked(EMT):
    """EMT that first sleeps ``delay`` s for a frame whose first atom sits at x = 0.123 Å."""

    def __init__(self, delay: float = 3.0, **kwargs):
        super().__init__(**kwargs)
        self.delay = delay

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        if atoms is not None and abs(atoms.positions[0, 0] - 0.123) < 1e-9:
            time.sleep(self.delay)
        super().calculate(atoms, properties, system_changes)


class CountingEMT(EMT):
    """EMT that counts its energy/force evaluations of distinct configurations."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.n_evaluations = 0

    def calculate(self, atoms=None, properties=("energy",), system_changes=("positions",)):
        self.n_evaluations += 1
        super().calculate(atoms, properties, system_changes)


class StartsRecorded(EMT):
    """EMT that notes each call it starts (class-wide, for thread pools), then sleeps."""

    started: list = []

    def __init__(self, delay: float = 2.5, **kwargs):
        super().__init__(**kwargs)
        self.delay = delay

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        StartsRecorded.started.append(time.monotonic())
        time.sleep(self.delay)
        super().calculate(atoms, properties, system_changes)


class FastThenHangs(EMT):
    """EMT that labels the first configuration a process asks about at once; for any
    other it first runs ``sleep delay`` as a child process (as a file-based calculator
    runs a DFT code), after noting its own and the child's process ids in ``note_dir``."""

    seen: list = []  # configurations asked about in this process

    def __init__(self, note_dir: str = ".", delay: float = 300.0, **kwargs):
        super().__init__(**kwargs)
        self.note_dir, self.delay = note_dir, delay

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        import os
        import subprocess

        key = atoms.positions.round(6).tobytes()
        if key not in FastThenHangs.seen:
            FastThenHangs.seen.append(key)
        if FastThenHangs.seen.index(key) > 0:
            child = subprocess.Popen(["sleep", str(self.delay)])
            with open(os.path.join(self.note_dir, f"hangs-{os.getpid()}"), "w") as fh:
                fh.write(f"{os.getpid()} {child.pid}\n")
            child.wait()
        super().calculate(atoms, properties, system_changes)


class HoldsALibraryHandle(EMT):
    """EMT that keeps an object pickle refuses after its first calculation, as tblite's
    calculator keeps its library's state."""

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        import threading

        super().calculate(atoms, properties, system_changes)
        self._handle = threading.Lock()


class ChargedEMT(EMT):
    """EMT with a ``charge`` setting (ignored), as a DFT or xTB calculator has one."""

    default_parameters = {**EMT.default_parameters, "charge": 0}


class ScaledEMT(EMT):
    """EMT times ``scale``, a setting kept as an attribute, not in ``parameters`` (as ASE's
    TIP3P keeps its cutoff): ``ScaledEMT(**parameters)`` does not rebuild it."""

    def __init__(self, scale: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.scale = scale

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        for k in ("energy", "free_energy", "energies", "forces", "stress"):
            if k in self.results:
                self.results[k] = self.results[k] * self.scale


class FailsAfterEMT(EMT):
    """EMT that raises from its ``fail_after + 1``-th call on (a licence that runs out)."""

    def __init__(self, fail_after: int = 100, **kwargs):
        super().__init__(**kwargs)
        self.parameters["fail_after"] = fail_after
        self.n = 0

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        self.n += 1
        if self.n > self.parameters["fail_after"]:
            raise RuntimeError(f"licence server unreachable (call {self.n})")
        super().calculate(atoms, properties, system_changes)


class RefusesLargeCellsEMT(EMT):
    """EMT that raises on a cell of more than ``max_volume`` Å^3 per atom (a baseline that
    fails on some frames only)."""

    def __init__(self, max_volume: float = 13.0, **kwargs):
        super().__init__(**kwargs)
        self.parameters["max_volume"] = max_volume

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        if atoms is not None and atoms.get_volume() / len(atoms) > self.parameters["max_volume"]:
            raise RuntimeError("SCF did not converge")
        super().calculate(atoms, properties, system_changes)


_FILE_EMT_PROGRAM = """
import json, time
from ase import Atoms
from ase.calculators.emt import EMT
d = json.load(open("calc.in"))
time.sleep(0.1)
a = Atoms(numbers=d["numbers"], positions=d["positions"], cell=d["cell"], pbc=d["pbc"])
a.calc = EMT()
json.dump({"energy": a.get_potential_energy(), "forces": a.get_forces().tolist()}, open("calc.out", "w"))
"""


class FileEMT(FileIOCalculator):
    """EMT run as a program that reads ``calc.in`` and writes ``calc.out`` in the
    calculator's directory (fixed file names, as a DFT code's)."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, **kwargs):
        import shlex
        import sys

        super().__init__(command=f"{shlex.quote(sys.executable)} -c {shlex.quote(_FILE_EMT_PROGRAM)}", **kwargs)

    def write_input(self, atoms, properties=None, system_changes=None):
        import json

        super().write_input(atoms, properties, system_changes)
        with open(f"{self.directory}/calc.in", "w") as fh:
            json.dump({"numbers": atoms.numbers.tolist(), "positions": atoms.positions.tolist(),
                       "cell": atoms.cell.array.tolist(), "pbc": atoms.pbc.tolist()}, fh)

    def read_results(self):
        import json

        with open(f"{self.directory}/calc.out") as fh:
            d = json.load(fh)
        self.results = {"energy": d["energy"], "free_energy": d["energy"], "forces": np.array(d["forces"])}


class WritesInputEMT(EMT):
    """EMT with a ``write_input`` method, as ASE's ``Vasp`` has (a plain ``Calculator``
    subclass that runs a program in its ``directory``)."""

    def write_input(self, atoms, properties=None, system_changes=None):
        pass


class StaleOutputEMT(EMT):
    """EMT whose every second call returns the previous call's results unchanged, as a
    file-based code that exited without writing its output is read back."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.n, self.previous = 0, None

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        self.n += 1
        if self.n % 2 == 0 and self.previous is not None:
            Calculator.calculate(self, atoms, properties, system_changes)
            self.results = {k: np.copy(v) for k, v in self.previous.items()}
            return
        super().calculate(atoms, properties, system_changes)
        self.previous = {k: np.copy(v) for k, v in self.results.items()}


class HangsOnce(EMT):
    """EMT that hangs ``delay`` s in the first calculation of any process, the one that
    creates the file ``marker``: a DFT code stuck once, fine when run again."""

    def __init__(self, marker: str, delay: float = 60.0, **kwargs):
        super().__init__(**kwargs)
        self.marker, self.delay = marker, delay

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        import os

        try:
            os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            pass
        else:
            time.sleep(self.delay)
        super().calculate(atoms, properties, system_changes)


class SleepingProgram(FileIOCalculator):
    """A file-based calculator whose program writes its pid to ``program.pid`` in the
    calculator's directory and then never finishes (``sleep``): a hung DFT code."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, **kwargs):
        super().__init__(command="echo $$ > program.pid; exec sleep 120", **kwargs)

    def read_results(self):  # (never reached: the program does not end)
        raise RuntimeError("no output")


def process_ended(pid: int) -> bool:
    """Whether process ``pid`` is gone or a zombie (ended, not yet reaped)."""
    import os

    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[-1].split()[0] == "Z"
    except FileNotFoundError:
        return True
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False


class CastepLikeEMT(EMT):
    """EMT with the attributes by which ASE's ``Castep`` runs its program: the command in
    ``_castep_command`` and its folder in ``_directory`` (not ``directory``)."""

    def __init__(self, directory: str = "CASTEP", castep_command: str = "castep", **kwargs):
        import os

        super().__init__(**kwargs)
        self._castep_command = castep_command
        self._directory = os.path.abspath(directory)


class MagmomEMT(EMT):
    """EMT plus 0.1 eV per unit of the frame's total initial magnetic moment: a label
    that depends on the moments the oracle was given, as a spin-polarised DFT one does."""

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        shift = 0.1 * float(np.sum(self.atoms.get_initial_magnetic_moments()))
        self.results["energy"] += shift
        self.results["free_energy"] += shift


class _SignalsInFinalizer:
    """An object whose finalizer sends this process a signal (SIGTERM by default) and
    then sleeps: the signal's handler runs inside ``__del__``, where Python discards what
    it raises."""

    def __init__(self, name: str = "SIGTERM"):
        self.name = name

    def __del__(self):
        import os
        import signal
        import time

        os.kill(os.getpid(), getattr(signal, self.name))
        time.sleep(0.2)


class TermInFinalizerEMT(EMT):
    """EMT whose ``at_call``-th calculation drops a :class:`_SignalsInFinalizer` (a
    SIGTERM, or the signal named by ``sig``, that arrives while a finalizer runs)."""

    def __init__(self, at_call: int = 6, sig: str = "SIGTERM", **kwargs):
        super().__init__(**kwargs)
        self.parameters["at_call"] = at_call
        self.parameters["sig"] = sig
        self.n = 0

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.n += 1
        if self.n == self.parameters["at_call"]:
            dropped = _SignalsInFinalizer(self.parameters["sig"])
            del dropped
