"""gpal models inside i-PI and LAMMPS: the engines record what gpal predicts.

i-PI runs as its own process (``i-pi input.xml``) and drives a gpal client through a
UNIX socket; LAMMPS runs in this process with ``fix external``. Both are optional and
skipped when absent.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms, units
from ase.build import bulk
from ase.io import read, write
from ase.md.verlet import VelocityVerlet

import gpal
from gpal.cli import main

from conftest import POLY, SMALL_SOAP, cu_frames


@pytest.fixture(scope="module")
def model():
    """A tiny Cu model: 4 EMT frames of a 32-atom cell, 20 sparse points."""
    soap = gpal.SOAP(["Cu"], periodic=True, weighting=POLY, **SMALL_SOAP)
    return gpal.SparseGP(soap, gpal.NormalizedDotProduct(zeta=4), n_sparse=20).fit(
        cu_frames(4, seed=1, size=(2, 2, 2)))


def _start(seed=0, strain=0.0) -> Atoms:
    rng = np.random.default_rng(seed)
    a = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 2, 2))
    if strain:
        a.set_cell(a.cell.array @ (np.eye(3) + strain * rng.uniform(-1, 1, (3, 3))), scale_atoms=True)
    a.positions += rng.normal(0, 0.05, a.positions.shape)
    return a


# --------------------------------------------------------------------------- i-PI
IPI_INPUT = """<simulation verbosity='low' floatformat='%.16e' safe_stride='1000'>
  <output prefix='sim'>
    <properties stride='1' filename='out'> [ step, potential{{electronvolt}}, virial_md{{ev/ang3}} ] </properties>
    <trajectory filename='pos' stride='1' format='ase'> positions </trajectory>
    <trajectory filename='frc' stride='1' format='ase'> forces </trajectory>
    <trajectory filename='std' stride='1' extra_type='energies_std'> extras </trajectory>
  </output>
  <total_steps> 20 </total_steps>
  <prng><seed> 31415 </seed></prng>
  <ffsocket name='gpal' mode='unix'><address> {address} </address></ffsocket>
  <system>
    <initialize nbeads='1'>
      <file mode='xyz'> init.xyz </file>
      <velocities mode='thermal' units='kelvin'> 600 </velocities>
    </initialize>
    <forces><force forcefield='gpal'/></forces>
    <motion mode='dynamics'>
      <dynamics mode='nve'><timestep units='femtosecond'> 1.0 </timestep></dynamics>
    </motion>
    <ensemble><temperature units='kelvin'> 600 </temperature></ensemble>
  </system>
</simulation>
"""


def _write_ipi_xyz(path: Path, atoms: Atoms) -> None:
    """i-PI's xyz: an orthorhombic cell and positions in Å in the comment line."""
    a, b, c = atoms.cell.lengths()
    lines = [str(len(atoms)),
             f"# CELL(abcABC): {a:.12f} {b:.12f} {c:.12f} 90.0 90.0 90.0 cell{{angstrom}} positions{{angstrom}}"]
    lines += [f"{s} {x:.12f} {y:.12f} {z:.12f}" for s, (x, y, z) in zip(atoms.get_chemical_symbols(), atoms.positions)]
    path.write_text("\n".join(lines) + "\n")


def _ipi_executable() -> str:
    pytest.importorskip("ipi")
    exe = Path(sys.executable).with_name("i-pi")
    exe = str(exe) if exe.exists() else shutil.which("i-pi")
    if exe is None:
        pytest.skip("the i-pi command is not installed")
    return exe


@pytest.mark.parametrize("via", ["python", "cli-template"])
def test_ipi_run_records_model_forces(model, tmp_path, via, capsys):
    """20 NVE steps of i-PI driven by gpal over a UNIX socket: every force, energy, virial
    and per-atom std i-PI records is gpal's prediction at the positions i-PI records.
    Through IPIClient (atoms from the model's one species), and through ``gpal ipi`` with
    i-PI's own start file as the template."""
    from gpal.engines.ipi import IPIClient

    exe = _ipi_executable()
    address = f"gpaltest-{uuid.uuid4().hex[:12]}"
    _write_ipi_xyz(tmp_path / "init.xyz", _start(seed=3))
    (tmp_path / "input.xml").write_text(IPI_INPUT.format(address=address))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    server = subprocess.Popen([exe, "input.xml"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        if via == "python":
            n = IPIClient(model, unixsocket=address, connect_timeout=60).run()
        else:
            path = model.save(tmp_path / "model.npz")
            assert main(["ipi", str(path), "--unix", address, "--template", str(tmp_path / "init.xyz"),
                         "--connect-timeout", "60"]) == 0
            n = int(capsys.readouterr().out.split("after ")[1].split()[0])
        out, _ = server.communicate(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
        Path(f"/tmp/ipi_{address}").unlink(missing_ok=True)
    assert server.returncode == 0, out[-2000:]
    assert n == 21  # the start and 20 steps

    positions = read(tmp_path / "sim.pos_0.extxyz", ":")
    forces = read(tmp_path / "sim.frc_0.extxyz", ":")
    props = np.loadtxt(tmp_path / "sim.out", ndmin=2)
    stds = [np.array(line.split(), dtype=float) for line in (tmp_path / "sim.std_0").read_text().splitlines()
            if not line.lstrip().startswith("#")]
    assert len(positions) == len(forces) == len(props) == len(stds) == 21
    moved = np.abs(positions[-1].positions - positions[0].positions).max()
    assert moved > 1e-3  # the dynamics did run
    for step, (a, fa) in enumerate(zip(positions, forces)):
        atoms = Atoms("Cu32", positions=a.positions, cell=a.cell, pbc=True)
        p = model.predict(atoms, return_std=True)
        np.testing.assert_allclose(fa.get_forces(), p["forces"], rtol=0, atol=1e-6, err_msg=f"step {step}")
        assert props[step, 1] == pytest.approx(p["energy"], abs=1e-6)
        # i-PI's virial_md is W/V = -σ (pressure sign), order xx yy zz xy xz yz
        np.testing.assert_allclose(props[step, 2:8], -p["stress"][[0, 1, 2, 5, 4, 3]], rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(stds[step], p["energies_std"], rtol=1e-6)


def test_ipi_client_needs_template_for_several_species(model):
    from gpal.engines.ipi import IPIClient  # ASE's socket client: no i-PI needed here

    two = gpal.SOAP(["Cu", "Ag"], periodic=True, weighting=POLY, **SMALL_SOAP)
    from conftest import cuag_frames

    alloy = gpal.SparseGP(two, gpal.NormalizedDotProduct(zeta=4), n_sparse=10).fit(cuag_frames(2, seed=2))
    with pytest.raises(ValueError, match="several species .*give a template structure"):
        IPIClient(alloy, unixsocket="gpal-none", connect_timeout=0.1)
    with pytest.raises(gpal.UnknownSpeciesError):
        IPIClient(model, Atoms("CuAg", positions=[[0, 0, 0], [2, 0, 0]]), unixsocket="gpal-none",
                  connect_timeout=0.1)


def test_cli_ipi_without_server_is_one_line(model, tmp_path, capsys):
    path = model.save(tmp_path / "model.npz")
    code = main(["ipi", str(path), "--unix", f"gpal-none-{uuid.uuid4().hex[:8]}", "--connect-timeout", "0.2"])
    err = capsys.readouterr().err.splitlines()
    assert code == 2
    assert err[-1].startswith("gpal ipi: error: no i-PI server at UNIX socket")
    assert sum(line.startswith("gpal ipi: error") for line in err) == 1


def _fake_ipi_server(name: str, send_exit: bool, ask_forces: bool, greeting: bytes | None = b"STATUS",
                     close_at_getforce: bool = False, outcome: list | None = None):
    """A one-step i-PI stand-in on a UNIX socket (ASE's protocol, in a thread): STATUS,
    POSDATA of a 32-atom Cu cell, optionally GETFORCE, then EXIT or a bare close.
    ``greeting``: its first message (None: silent until the client gives up; other
    bytes: a server that is not i-PI); ``close_at_getforce``: it dies right after asking
    for the forces; ``outcome``: POSDATA and GETFORCE go in one send, as i-PI 3.3 sends
    them, then it reads until the client's end and appends "end" (an orderly close) or
    the error's name (a reset) to ``outcome``."""
    import socket
    import threading

    path = f"/tmp/ipi_{name}"
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen(1)

    def serve():
        c, _ = srv.accept()
        bohr = units.Bohr
        a = _start(3)
        if greeting != b"STATUS":  # not i-PI: wait for the client to hang up
            if greeting:
                c.sendall(greeting)
            c.settimeout(10)
            try:
                c.recv(12)
            except OSError:
                pass
            c.close()
            srv.close()
            os.unlink(path)
            return
        c.sendall(b"STATUS".ljust(12))
        c.recv(12)
        c.sendall(b"POSDATA".ljust(12) + (a.cell.array.T / bohr).tobytes()
                  + (np.linalg.inv(a.cell.array).T * bohr).tobytes()
                  + np.array([len(a)], np.int32).tobytes() + (a.positions / bohr).tobytes()
                  + (b"GETFORCE".ljust(12) if outcome is not None else b""))
        if outcome is not None:
            c.settimeout(20)
            try:
                while c.recv(4096):
                    pass
                outcome.append("end")
            except OSError as exc:
                outcome.append(type(exc).__name__)
            c.close()
            srv.close()
            os.unlink(path)
            return
        if close_at_getforce:
            c.sendall(b"STATUS".ljust(12))
            c.recv(12)
            c.sendall(b"GETFORCE".ljust(12))
            c.shutdown(socket.SHUT_RDWR)
            c.close()
            srv.close()
            os.unlink(path)
            return
        if ask_forces:
            c.sendall(b"STATUS".ljust(12))
            c.recv(12)
            c.sendall(b"GETFORCE".ljust(12))
            c.recv(12, socket.MSG_WAITALL)  # FORCEREADY
            head = c.recv(8 + 4 + 8 * 3 * len(a) + 8 * 9 + 4, socket.MSG_WAITALL)
            c.recv(int(np.frombuffer(head[-4:], np.int32)[0]), socket.MSG_WAITALL)  # the JSON extras
        if send_exit:
            c.sendall(b"EXIT".ljust(12))
        c.close()
        srv.close()
        os.unlink(path)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return t


@pytest.mark.parametrize("send_exit, ask_forces, ended", [(True, True, "EXIT"), (False, True, "disconnect"),
                                                         (False, False, None)])
def test_ipi_client_tells_an_end_from_a_crash(model, send_exit, ask_forces, ended):
    from gpal.engines.ipi import IPIClient

    name = f"gpal-fake-{uuid.uuid4().hex[:8]}"
    t = _fake_ipi_server(name, send_exit, ask_forces)
    client = IPIClient(model, _start(3), unixsocket=name, connect_timeout=5)
    if ended is None:  # positions sent, forces never asked: the server died mid-step
        with pytest.raises(gpal.GpalError, match="closed the connection before asking for the forces"):
            client.run()
    else:
        assert client.run() == 1 and client.ended_by == ended
    t.join(10)


def test_ipi_client_takes_the_socket_files_path_as_its_name(model, capsys):
    """``gpal ipi --unix /tmp/ipi_NAME`` (the file the help names) connected to
    /tmp/ipi_/tmp/ipi_NAME and said no server was there; a socket file elsewhere, which
    ASE's client cannot reach, is one line, exit 2."""
    from gpal.engines.ipi import IPIClient

    name = f"gpal-fake-{uuid.uuid4().hex[:8]}"
    t = _fake_ipi_server(name, True, True)
    client = IPIClient(model, _start(3), unixsocket=f"/tmp/ipi_{name}", connect_timeout=5)
    assert client.address == f"UNIX socket {name!r}"
    assert client.run() == 1 and client.ended_by == "EXIT"
    t.join(10)
    with pytest.raises(ValueError, match="give i-PI's socket NAME"):
        IPIClient(model, unixsocket="/scratch/ipi.sock", connect_timeout=0.1)
    capsys.readouterr()
    assert main(["ipi", str(model.save(f"/tmp/gpal-{name}.npz")), "--unix", "/scratch/ipi.sock",
                 "--connect-timeout", "0.1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    os.unlink(f"/tmp/gpal-{name}.npz")
    assert len(err) == 1 and "give i-PI's socket NAME" in err[0]


def test_ipi_client_names_a_server_that_dies_while_it_answers_or_is_not_ipi(model, tmp_path, capsys):
    """A server that closes while gpal sends the forces (BrokenPipeError, and ``gpal ipi``
    exited 141 silently), one that never speaks (it waited for ever), one that speaks
    another protocol ("missing entry 'Bad message'") and an unknown host: one GpalError
    or ConnectionError each, naming what happened. ``gpal ipi`` exits with 1 when i-PI
    closes without its EXIT message, and takes a model's path as the Python API does."""
    from gpal.engines.ipi import IPIClient

    path = str(model.save(tmp_path / "model.npz"))
    name = f"gpal-fake-{uuid.uuid4().hex[:8]}"
    t = _fake_ipi_server(name, False, True, close_at_getforce=True)
    with pytest.raises(gpal.GpalError, match="broke while gpal was answering.*crashed or was killed"):
        IPIClient(path, unixsocket=name, connect_timeout=5).run()
    t.join(10)
    for greeting, msg in ((None, "sent no i-PI message in 0.5 s: is it an i-PI server"),
                          (b"HTTP/1.1 400 Bad Request\r\n\r\n", "does not speak i-PI's protocol")):
        name = f"gpal-fake-{uuid.uuid4().hex[:8]}"
        t = _fake_ipi_server(name, False, False, greeting=greeting)
        with pytest.raises(gpal.GpalError, match=msg):
            IPIClient(model, unixsocket=name, connect_timeout=5, handshake_timeout=0.5).run()
        t.join(15)
    with pytest.raises(ConnectionError, match="unknown host 'nosuchhost.invalid'"):
        IPIClient(model, host="nosuchhost.invalid", port=31999, connect_timeout=0.2)
    name = f"gpal-fake-{uuid.uuid4().hex[:8]}"
    t = _fake_ipi_server(name, False, True)
    assert main(["ipi", path, "--unix", name, "--connect-timeout", "5"]) == 1
    assert "closed the connection without its EXIT message after 1 evaluations" in capsys.readouterr().err
    t.join(10)


def test_a_client_that_leaves_mid_request_ends_its_connection_in_order(model):
    """gpal closed its socket with i-PI's GETFORCE unread (a model error, SIGTERM,
    IPIClient.close): the kernel reset the connection, which killed i-PI 3.3's polling
    thread, and i-PI neither went on with another client nor ended. What i-PI sent is now
    read first, and the server reads an orderly end."""
    from gpal.engines.ipi import IPIClient

    name = f"gpal-fake-{uuid.uuid4().hex[:8]}"
    outcome = []
    t = _fake_ipi_server(name, False, False, outcome=outcome)
    client = IPIClient(model, unixsocket=name, connect_timeout=5)
    steps = client.irun()
    next(steps)  # the structure evaluated, GETFORCE not read yet
    client.close()
    t.join(20)
    assert outcome == ["end"]


def test_a_template_in_another_order_than_ipis_atoms_is_said(model):
    """A template sorted otherwise than i-PI's atoms (right count, species taken by index):
    12 of 32 atoms were evaluated as the other element, without a word."""
    from gpal.engines.ipi import IPIClient

    template = _start(3)
    template.positions = template.positions[::-1].copy()  # (another order of the same atoms)
    name = f"gpal-fake-{uuid.uuid4().hex[:8]}"
    t = _fake_ipi_server(name, True, True)
    with pytest.warns(UserWarning, match=r"atoms more than 1 Å from the template's atom of the same index"):
        IPIClient(model, template, unixsocket=name, connect_timeout=5).run()
    t.join(10)
    name = f"gpal-fake-{uuid.uuid4().hex[:8]}"
    t = _fake_ipi_server(name, True, True)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        IPIClient(model, _start(3), unixsocket=name, connect_timeout=5).run()  # (i-PI's own order)
    t.join(10)


def test_gpal_ipi_exits_1_when_ipi_goes_away_mid_step_and_refuses_an_empty_socket_name(model, tmp_path, capsys):
    """A server that closed after sending a structure, or broke the connection while gpal
    answered, ended gpal ipi with 2 (bad input); the README says 1. --unix '' named
    localhost:31415 as the address it tried."""
    path = str(model.save(tmp_path / "model.npz"))
    name = f"gpal-fake-{uuid.uuid4().hex[:8]}"
    t = _fake_ipi_server(name, False, False)  # positions sent, forces never asked
    capsys.readouterr()
    assert main(["ipi", path, "--unix", name, "--connect-timeout", "5"]) == 1
    assert "closed the connection before asking for the forces" in capsys.readouterr().err
    t.join(10)
    assert main(["ipi", path, "--unix", "", "--connect-timeout", "1"]) == 2
    assert "--unix needs i-PI's socket name" in capsys.readouterr().err


# --------------------------------------------------------------------------- LAMMPS
def _lammps():
    pytest.importorskip("lammps")
    from gpal.engines.lammps import open_lammps

    try:
        return open_lammps()
    except ImportError as exc:
        pytest.skip(f"LAMMPS cannot start here: {exc}")


def _read_dump(path: Path) -> list[dict]:
    """Frames of a ``dump custom`` file: timestep, box rows and atom columns sorted by id."""
    frames, lines, k = [], path.read_text().splitlines(), 0
    while k < len(lines):
        step = int(lines[k + 1])
        n = int(lines[k + 3])
        box = np.array([[float(v) for v in lines[k + 5 + i].split()] for i in range(3)])
        cols = lines[k + 8].split()[2:]
        data = np.array([[float(v) for v in lines[k + 9 + i].split()] for i in range(n)])
        data = data[np.argsort(data[:, cols.index("id")])]
        frames.append({"step": step, "box": box, **{c: data[:, i] for i, c in enumerate(cols)}})
        k += 9 + n
    return frames


def _cell_from_dump_box(box: np.ndarray) -> np.ndarray:
    """LAMMPS triclinic dump bounds (xlo_bound xhi_bound xy ...) to cell rows."""
    (xlob, xhib, xy), (ylob, yhib, xz), (zlo, zhi, yz) = box
    xlo = xlob - min(0.0, xy, xz, xy + xz)
    xhi = xhib - max(0.0, xy, xz, xy + xz)
    ylo, yhi = ylob - min(0.0, yz), yhib - max(0.0, yz)
    return np.array([[xhi - xlo, 0, 0], [xy, yhi - ylo, 0], [xz, yz, zhi - zlo]])


def test_lammps_fix_external_matches_ase_calculator(model, tmp_path):
    """20 NVE steps of LAMMPS on gpal (triclinic box, atoms re-sorted every step): LAMMPS'
    energies are gpal's ASE calculator on LAMMPS' trajectory, the trajectory is ASE's
    VelocityVerlet on the same model, the pressure tensor is -σ, the per-atom property
    holds the stds."""
    from gpal.engines.lammps import FixExternalCoupling

    lmp = _lammps()
    write(tmp_path / "cu.data", _start(seed=5, strain=0.03), format="lammps-data", atom_style="atomic",
          masses=True)
    lmp.commands_string(f"""
        units metal
        atom_style atomic
        atom_modify map array sort 1 1.0
        read_data {tmp_path / 'cu.data'}
        timestep 0.001
        velocity all create 600 4928 mom yes rot no dist gaussian
        fix nve all nve
    """)
    gp = FixExternalCoupling(lmp, model, ["Cu"])
    lmp.commands_string(f"""
        compute pea all pe/atom
        variable pe equal pe
        fix pe all print 1 "${{pe}}" file {tmp_path / 'pe.txt'} screen no
        dump d all custom 1 {tmp_path / 'md.dump'} id xu yu zu vx vy vz d_gpal_std
        dump_modify d format float %.17g
    """)
    gp.run(20)
    lmp.command("undump d")
    assert gp.n_evaluations == 21 and gp.error is None
    frames = _read_dump(tmp_path / "md.dump")
    pe = np.loadtxt(tmp_path / "pe.txt", comments="#")
    assert len(frames) == 21 and len(pe) == 21
    cell = _cell_from_dump_box(frames[0]["box"])
    for fr, e in zip(frames, pe):
        atoms = Atoms("Cu32", positions=np.c_[fr["xu"], fr["yu"], fr["zu"]], cell=cell, pbc=True)
        atoms.calc = gpal.GPCalculator(model)
        assert e == pytest.approx(atoms.get_potential_energy(), abs=1e-9)
        np.testing.assert_allclose(fr["d_gpal_std"], atoms.calc.results["energies_std"], rtol=1e-6)

    # ASE's VelocityVerlet from LAMMPS' start: same trajectory (units: Å/ps -> ASE)
    first, last = frames[0], frames[-1]
    atoms = Atoms("Cu32", positions=np.c_[first["xu"], first["yu"], first["zu"]], cell=cell, pbc=True)
    atoms.set_velocities(np.c_[first["vx"], first["vy"], first["vz"]] / (1000 * units.fs))
    atoms.calc = gpal.GPCalculator(model)
    VelocityVerlet(atoms, timestep=1.0 * units.fs).run(20)
    np.testing.assert_allclose(atoms.positions, np.c_[last["xu"], last["yu"], last["zu"]], atol=1e-7)
    assert np.abs(atoms.positions - np.c_[first["xu"], first["yu"], first["zu"]]).max() > 1e-3

    # pressure at rest is the virial alone: LAMMPS' p_ij = -σ_ij (bar)
    lmp.command("velocity all set 0 0 0")
    gp.run(0)
    press = [lmp.get_thermo(k) for k in ("pxx", "pyy", "pzz", "pxy", "pxz", "pyz")]
    np.testing.assert_allclose(press, -gp.last["stress"][[0, 1, 2, 5, 4, 3]] / units.bar, rtol=1e-6, atol=1e-3)
    # per-atom energies (compute pe/atom) are the local energies, matched by atom ID
    tag = lmp.numpy.extract_atom("id")[:32]
    pea = lmp.numpy.extract_compute("pea", 1, 1)[:32]
    np.testing.assert_allclose(pea[np.argsort(tag)], gp.last["energies"], rtol=0, atol=1e-12)
    lmp.close()


def test_lammps_model_error_stops_the_run_and_is_raised(model, tmp_path):
    from gpal.engines.lammps import FixExternalCoupling

    lmp = _lammps()
    write(tmp_path / "cu.data", _start(seed=6), format="lammps-data", atom_style="atomic", masses=True)
    lmp.commands_string(f"""
        units metal
        atom_style atomic
        read_data {tmp_path / 'cu.data'}
        fix nve all nve
    """)
    with pytest.raises(ValueError, match="does not know species Ag"):
        FixExternalCoupling(lmp, model, ["Ag"])
    gp = FixExternalCoupling(lmp, model, {1: "Cu"})
    gp.run(2)
    x = lmp.numpy.extract_atom("x")
    tag = lmp.numpy.extract_atom("id")[: len(x)]
    x[np.flatnonzero(tag == 2)[0]] = x[np.flatnonzero(tag == 1)[0]] + 0.01  # two atoms on top of each other
    with pytest.raises(gpal.OverlappingAtomsError):
        gp.run(10)
    assert lmp.extract_global("ntimestep") <= 3
    lmp.close()


def test_lammps_minimize_raises_and_the_coupling_checks_its_inputs(model, tmp_path):
    """A failed evaluation during ``minimize`` (which ``fix halt`` does not stop) is raised
    by ``FixExternalCoupling.minimize``, and LAMMPS sees the energy NaN, not the last
    structure's; a model path and ``species="Cu"`` are taken (the string was read as the
    symbols C, u); types listed in another order than their LAMMPS masses are refused
    (a silent energy 4x off before)."""
    from conftest import cuag_frames
    from gpal.engines.lammps import FixExternalCoupling

    lmp = _lammps()
    write(tmp_path / "cu.data", _start(seed=6), format="lammps-data", atom_style="atomic", masses=True)
    lmp.commands_string(f"units metal\natom_style atomic\nread_data {tmp_path / 'cu.data'}\n")
    gp = FixExternalCoupling(lmp, str(model.save(tmp_path / "m.npz")), "Cu")
    gp.minimize(ftol=1e-4, maxiter=5)
    assert gp.n_evaluations >= 2 and np.isfinite(lmp.get_thermo("pe"))
    x = lmp.numpy.extract_atom("x")
    tag = lmp.numpy.extract_atom("id")[: len(x)]
    moved = np.flatnonzero(tag == 2)[0]
    kept = x[moved].copy()
    x[moved] = x[np.flatnonzero(tag == 1)[0]] + 0.01
    with pytest.raises(gpal.OverlappingAtomsError):
        gp.minimize(ftol=1e-4, maxiter=5)
    assert np.isnan(lmp.get_thermo("pe"))
    # the atom put back, the coupling evaluates again (fix halt's soft stop skipped every
    # later run and minimization: 0 steps, no error)
    lmp.numpy.extract_atom("x")[moved] = kept
    n = gp.n_evaluations
    with pytest.warns(UserWarning, match="timer timeout is off"):
        gp.run(3)
    assert gp.n_evaluations == n + 4 and np.isfinite(lmp.get_thermo("pe"))
    lmp.close()

    soap = gpal.SOAP(["Cu", "Ag"], periodic=True, weighting=POLY, **SMALL_SOAP)
    alloy = gpal.SparseGP(soap, gpal.NormalizedDotProduct(zeta=4), n_sparse=10).fit(cuag_frames(2, seed=2))
    a = cuag_frames(1, seed=5)[0]
    write(tmp_path / "cuag.data", a, format="lammps-data", atom_style="atomic", masses=True,
          specorder=["Cu", "Ag"])
    lmp = _lammps()
    lmp.commands_string(f"units metal\natom_style atomic\nread_data {tmp_path / 'cuag.data'}\n")
    with pytest.raises(ValueError, match="type 1 has the mass of Cu .* maps it to Ag"):
        FixExternalCoupling(lmp, alloy, ["Ag", "Cu"])
    with pytest.raises(ValueError, match="unknown chemical symbol.*'CuAg'"):
        FixExternalCoupling(lmp, alloy, "CuAg")
    gp = FixExternalCoupling(lmp, alloy, "Cu Ag")
    gp.run(0)
    a.calc = gpal.GPCalculator(alloy)
    assert gp.last["energy"] == pytest.approx(a.get_potential_energy(), abs=1e-8)
    lmp.close()


def test_lammps_evaluates_a_molecule_model_unwrapped_in_a_periodic_box(tmp_path):
    """A model with ``periodic=False`` in a ``p p p`` box: LAMMPS wraps a molecule lying
    across the boundary into two pieces; gpal evaluates it whole, from the image flags
    (the torn cluster gave 2.55 eV for 5.19 in a review)."""
    from ase.build import molecule

    from gpal.engines.lammps import FixExternalCoupling

    rng = np.random.default_rng(0)
    frames = []
    for _ in range(3):
        m = molecule("CH3OH")
        m.positions += rng.normal(0, 0.05, m.positions.shape)
        m.calc = None
        from ase.calculators.emt import EMT  # EMT's parameters for H, C, O: a stand-in oracle

        m.calc = EMT()
        m.get_forces()
        frames.append(m)
    soap = gpal.SOAP(["H", "C", "O"], periodic=False, weighting=POLY, **SMALL_SOAP)
    mol = gpal.SparseGP(soap, gpal.NormalizedDotProduct(zeta=4), n_sparse=10).fit(frames)
    m = frames[0].copy()
    m.center(vacuum=5.0)
    ref = mol.predict(m)["energy"]
    m.positions[:, 0] += m.cell[0, 0] - 0.6 - m.positions[:, 0].min()  # across x = L
    m.pbc = True
    write(tmp_path / "mol.data", m, format="lammps-data", atom_style="atomic", masses=True,
          specorder=["H", "C", "O"])
    lmp = _lammps()
    lmp.commands_string(f"units metal\natom_style atomic\nboundary p p p\nread_data {tmp_path / 'mol.data'}\n")
    assert np.ptp(lmp.numpy.extract_atom("x")[: len(m), 0]) > m.cell[0, 0] / 2  # wrapped apart
    gp = FixExternalCoupling(lmp, mol, ["H", "C", "O"])
    gp.run(0)
    assert gp.last["energy"] == pytest.approx(ref, abs=1e-8)
    lmp.close()
