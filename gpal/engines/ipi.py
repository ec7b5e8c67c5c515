"""A gpal model as an i-PI client (a "driver" in i-PI's words).

i-PI (https://ipi-code.org, ``pip install ipi``) runs the dynamics (MD, path-integral MD,
replica exchange, PLUMED-biased runs, geometry optimisation, ...) and asks its clients
for energy, forces and virial over a socket, one structure (bead) at a time. This
module answers those requests with a fitted :class:`gpal.SparseGP`, on top of ASE's
i-PI socket client (:class:`ase.calculators.socketio.SocketClient`) and
:class:`gpal.GPCalculator`.

What goes back to i-PI for each structure
------------------------------------------
* potential energy and forces (ASE's socket protocol converts eV, eV/Å to Hartree and
  Hartree/Bohr);
* the virial W = -V σ (σ the model's stress, ASE sign convention: positive when the
  cell pulls inwards), the convention of i-PI's own ASE driver; zero for molecules;
* an ``extras`` JSON string with the model's uncertainty::

      {"energies_std": [...],      # (n_atoms,) DTC std of each local energy, eV
       "energy_std": ...,          # std of the total energy, eV
       "max_energies_std": ...,    # its largest entry, eV
       "novelty": [...],           # (n_atoms,) unexplained prior-variance fraction, [0, 1]
       "forces_std": [[...], ...]} # (n_atoms, 3) eV/Å, only with forces_std=True

  i-PI stores it per bead; ``<trajectory filename='std' extra_type='energies_std'>
  extras </trajectory>`` writes the per-atom stds, one block per step.

The stds are calibrated (:meth:`gpal.SparseGP.set_calibration`) when the model stores a
calibration, unless ``calibrated=False``.

Atoms: i-PI sends only positions and the cell. A model of one species needs nothing
else (the atom count comes with the first structure). Models of several species need a
template structure whose atoms are in i-PI's order (the file i-PI initialises from is the
natural choice). Periodicity follows the model's descriptor.

Example
-------
In one shell ``i-pi input.xml`` (with ``<ffsocket mode='unix'><address>gpal</address>``),
in another ``gpal ipi model.npz --unix gpal``, or from Python::

    from gpal.engines import serve_ipi
    serve_ipi(gpal.load("model.npz"), unixsocket="gpal")
"""

from __future__ import annotations

import json
import os
import socket
import time
import warnings

import numpy as np
from ase import Atoms
from ase.calculators.socketio import IPIProtocol, SocketClient, SocketClosed
from ase.parallel import DummyMPI

from ..calculator import GPCalculator
from .._validation import check_atoms, check_is_fitted

__all__ = ["IPIClient", "serve_ipi"]

#: an atom of i-PI's first structure farther than this (Å) from the template's atom of
#: the same index is said (IPIClient._check_template_order)
_TEMPLATE_TOLERANCE = 1.0


class _ExtrasProtocol(IPIProtocol):
    """ASE's i-PI protocol, sending the owner's JSON extras with the forces and growing
    a template-free structure to the atom count of the first POSDATA."""

    def __init__(self, sock, owner: "IPIClient", txt=None):
        super().__init__(sock, txt=txt)
        self.owner = owner
        self.first = True

    def recvmsg(self):
        first, self.first = self.first, False
        if first:  # i-PI asks for its client's status at once: a silent peer is not i-PI
            previous = self.socket.gettimeout()
            self.socket.settimeout(self.owner.handshake_timeout)
        try:
            msg = super().recvmsg()
        except (SocketClosed, ConnectionResetError):  # the server went away without EXIT
            self.owner.ended_by = "disconnect"
            raise SocketClosed from None
        except (socket.timeout, TimeoutError):
            if not first:
                raise
            raise _NotIPI(f"connected to {self.owner.address}, but it sent no i-PI message in "
                          f"{self.owner.handshake_timeout:g} s: is it an i-PI server?") from None
        except (UnicodeDecodeError, AssertionError):  # not the 12 ASCII bytes of an i-PI header
            raise _NotIPI(f"the server at {self.owner.address} does not speak i-PI's protocol") from None
        finally:
            if first:
                self.socket.settimeout(previous)
        if msg == "EXIT":
            self.owner.ended_by = "EXIT"
        return msg

    def recvposdata(self):
        cell, icell, positions = super().recvposdata()
        self.owner._match_atoms(len(positions))
        self.owner._check_template_order(cell, positions)
        return cell, icell, positions

    def sendforce(self, energy, forces, virial, morebytes=None):
        extras = np.frombuffer(self.owner._extras.encode("utf-8"), dtype=np.byte)
        super().sendforce(energy, forces, virial, extras)


class _NotIPI(Exception):
    """The peer does not speak i-PI's protocol (turned into a GpalError by IPIClient)."""


class _Client(SocketClient):
    """:class:`SocketClient` whose ``calculate`` also builds the uncertainty extras."""

    def __init__(self, owner: "IPIClient", *, host, port, unixsocket, timeout, log):
        super().__init__(host=host, port=port, unixsocket=unixsocket, timeout=timeout, log=log,
                         comm=DummyMPI())
        self.protocol = _ExtrasProtocol(self.protocol.socket, owner, txt=log)
        self.log = self.protocol.log
        self.owner = owner

    def calculate(self, atoms, use_stress):
        energy, forces, virial = super().calculate(atoms, use_stress)
        self.owner._set_extras(atoms.calc.results)
        return energy, forces, virial

    def close(self, wait: float = 1.0) -> None:
        """Close the socket after reading what i-PI has sent (for at most ``wait`` s).

        A socket closed with unread data (i-PI's next request, sent while gpal computed)
        is reset, and a reset killed i-PI 3.3's polling thread: i-PI made no more steps,
        never ended, and no other client could take over (after a SIGTERM, a model error,
        or ``IPIClient.close``). Shutting down gpal's side first lets i-PI read an end
        and drop this client; ASE's loop closes the socket on any way out of it.
        """
        if not self.closed:
            sock = self.protocol.socket
            try:
                sock.shutdown(socket.SHUT_WR)
                sock.settimeout(wait)
                deadline = time.monotonic() + wait
                while sock.recv(65536) and time.monotonic() < deadline:
                    pass
            except OSError:  # (i-PI gone, or it reset first: nothing left to read)
                pass
        super().close()


def _socket_name(unixsocket: str | None) -> str | None:
    """The NAME of i-PI's socket file ``/tmp/ipi_NAME`` (ASE's client adds the prefix): the
    name as given, or taken from the file's path (``--unix /tmp/ipi_NAME`` had connected to
    ``/tmp/ipi_/tmp/ipi_NAME`` and said no server was there); a ValueError for a path
    elsewhere, which ASE's client cannot reach."""
    if unixsocket is None:
        return None
    name = os.fspath(unixsocket)
    if name.startswith("/tmp/ipi_") and len(name) > len("/tmp/ipi_"):
        return name[len("/tmp/ipi_"):]
    if "/" in name:
        raise ValueError(f"unixsocket {name!r}: give i-PI's socket NAME (its <address>), whose file is "
                         "/tmp/ipi_NAME; a socket file elsewhere cannot be reached (ASE's client adds that prefix)")
    return name


class IPIClient:
    """Serve a fitted gpal model to an i-PI server.

    Parameters
    ----------
    model : gpal.SparseGP or path
        A fitted model, or the path of a saved one (``.npz``).
    template : ase.Atoms, optional
        The system i-PI simulates, atoms in i-PI's order: gives the species (cell and
        positions come from i-PI; periodic if the model's descriptor is). Optional for
        a model of one species.
    unixsocket : str, optional
        Name of i-PI's UNIX socket (``<address>`` of an ``<ffsocket mode='unix'>``;
        the file is ``/tmp/ipi_NAME``, which is also taken). Without it, connect over
        INET to ``host:port``.
    host : str, default "localhost"
    port : int, optional
        INET port (i-PI's ``<port>``); default ASE's 31415.
    calibrated : bool, optional
        Report calibrated stds; default: when the model stores a calibration.
    forces_std : bool, default False
        Also send ``forces_std`` (n_atoms, 3) eV/Å in the extras (costs about one
        training-frame derivative pass per structure).
    connect_timeout : float, default 30.0
        Seconds to keep trying to connect (i-PI may still be starting).
    timeout : float, optional
        Socket timeout once connected (None: wait for i-PI indefinitely).
    handshake_timeout : float, default 60.0
        Seconds to wait for the server's first message after connecting (i-PI asks at
        once; a peer that stays silent is not an i-PI server).
    log : file object, optional
        Write ASE's protocol log here.

    Attributes
    ----------
    atoms : ase.Atoms
        The structure of the last request (positions in Å).
    n_evaluations : int
        Structures evaluated so far.
    """

    def __init__(
        self,
        model,
        template: Atoms | None = None,
        *,
        unixsocket: str | None = None,
        host: str = "localhost",
        port: int | None = None,
        calibrated: bool | None = None,
        forces_std: bool = False,
        connect_timeout: float = 30.0,
        timeout: float | None = None,
        handshake_timeout: float = 60.0,
        log=None,
    ):
        if isinstance(model, (str, os.PathLike)):
            from ..model import load

            model = load(model)
        check_is_fitted(model)
        self.handshake_timeout = float(handshake_timeout)
        self.model = model
        species = [int(z) for z in model.species_]
        periodic = bool(model.descriptor_.periodic)
        if template is None:
            if len(species) != 1:
                from ase.data import chemical_symbols

                names = ", ".join(chemical_symbols[z] for z in species)
                raise ValueError(f"the model knows several species ({names}): give a template structure "
                                 "with i-PI's atoms in i-PI's order so gpal knows which atom is which")
            self.atoms = Atoms(pbc=periodic)
            self._species = species[0]
        else:
            if not isinstance(template, Atoms):
                raise TypeError(f"template must be an ase.Atoms, got {type(template).__name__}")
            check_atoms(template, species=species, what="the template structure")
            # species and order from the template; cell and positions come from i-PI
            self.atoms = Atoms(numbers=template.numbers, positions=template.positions, pbc=periodic)
            self._species = None
        if calibrated is None:
            calibrated = bool(getattr(model, "calibration_", None))
        self.calibrated = bool(calibrated)
        self.forces_std = bool(forces_std)
        self.atoms.calc = GPCalculator(model, calibrated=self.calibrated, forces_std=self.forces_std)
        self._extras = "{}"
        self._template_checked = False
        self.n_evaluations = 0
        self.ended_by = None  # "EXIT" (i-PI ended the run) or "disconnect" (the socket closed)
        unixsocket = _socket_name(unixsocket)
        self.address = f"UNIX socket {unixsocket!r}" if unixsocket else f"{host}:{port or 31415}"
        self._client = self._connect(host, port, unixsocket, float(connect_timeout), timeout, log)

    def _connect(self, host, port, unixsocket, connect_timeout, timeout, log) -> _Client:
        deadline = time.monotonic() + connect_timeout
        while True:
            try:
                return _Client(self, host=host, port=port, unixsocket=unixsocket, timeout=timeout, log=log)
            except socket.gaierror as exc:
                raise ConnectionError(f"cannot reach i-PI at {self.address}: unknown host {host!r} "
                                      f"({exc.strerror or exc})") from None
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                if time.monotonic() >= deadline:
                    raise ConnectionRefusedError(
                        f"no i-PI server at {self.address} after {connect_timeout:g} s ({exc.strerror or exc}); "
                        "start i-pi first, and check the socket name or port") from exc
                time.sleep(0.1)

    # -------------------------------------------------------------- protocol hooks
    def _match_atoms(self, n_atoms: int) -> None:
        if len(self.atoms) == n_atoms:
            return
        if len(self.atoms) == 0 and self._species is not None:
            self.atoms.extend(Atoms(numbers=np.full(n_atoms, self._species), pbc=self.atoms.pbc))
            return
        if self._species is not None:  # no template: the first structure fixed the count
            raise ValueError(f"i-PI sent {n_atoms} atoms after structures of {len(self.atoms)}: one gpal "
                             "client serves one system (start one per <system> of another size)")
        raise ValueError(f"i-PI sent {n_atoms} atoms, the template structure has {len(self.atoms)}")

    def _check_template_order(self, cell, positions) -> None:
        """Warn, on i-PI's first structure, when atoms of the template sit far from i-PI's
        atoms of the same index: species are taken from the template by index, so a
        template in another order (sorted by species) evaluated 12 of 32 atoms as the
        other element, with no word (forces 0.14 eV/Å off, the energy 1.3 eV)."""
        if self._template_checked or self._species is not None or self.n_evaluations:
            return
        self._template_checked = True
        from ase.geometry import find_mic

        pbc = self.atoms.pbc
        d = np.asarray(positions, dtype=float) - self.atoms.positions
        if pbc.any():
            d = find_mic(d, np.asarray(cell, dtype=float), pbc)[0]
        dist = np.linalg.norm(d, axis=1)
        far = int(np.count_nonzero(dist > _TEMPLATE_TOLERANCE))
        if far:
            warnings.warn(
                f"i-PI's first structure has {far} of {len(dist)} atoms more than {_TEMPLATE_TOLERANCE:g} Å "
                f"from the template's atom of the same index (up to {dist.max():.2f} Å): gpal takes each atom's "
                "species from the template by index, so the template must list the atoms in i-PI's order "
                "(i-PI's own start file is); a restart from other positions is fine",
                UserWarning, stacklevel=2)

    def _set_extras(self, results: dict) -> None:
        extras = {}
        if "energies_std" in results:
            std = np.asarray(results["energies_std"], dtype=float)
            extras["energies_std"] = std.tolist()
            extras["energy_std"] = float(results["energy_std"])
            extras["max_energies_std"] = float(std.max())
        if "novelty" in results:
            extras["novelty"] = np.asarray(results["novelty"], dtype=float).tolist()
        if "forces_std" in results:
            extras["forces_std"] = np.asarray(results["forces_std"], dtype=float).tolist()
        self._extras = json.dumps(extras)
        self.n_evaluations += 1

    # -------------------------------------------------------------- running
    def irun(self):
        """Serve requests, yielding after each evaluation (``self.atoms`` holds it).

        Ends when i-PI sends EXIT or closes the connection.

        Raises
        ------
        gpal.GpalError
            The peer does not speak i-PI's protocol; a :class:`gpal.RunStoppedError` when
            the connection broke while gpal was sending (the server crashed or was killed).
        """
        from ..exceptions import GpalError, RunStoppedError

        try:
            yield from self._client.irun(self.atoms, use_stress=bool(np.all(self.atoms.pbc)))
        except _NotIPI as exc:
            raise GpalError(str(exc)) from None
        except KeyError as exc:  # ASE's protocol: KeyError("Bad message", msg)
            if not exc.args or exc.args[0] != "Bad message":
                raise
            got = exc.args[1] if len(exc.args) > 1 else ""
            raise GpalError(f"the server at {self.address} does not speak i-PI's protocol (it sent "
                            f"{got!r})") from None
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError) as exc:
            self.ended_by = "disconnect"
            raise RunStoppedError(f"the connection to i-PI at {self.address} broke while gpal was answering "
                            f"({exc.strerror or type(exc).__name__}: the server crashed or was killed); "
                            f"{self.n_evaluations} evaluations made") from None

    def run(self) -> int:
        """Serve requests until i-PI ends the run; returns the number of evaluations.

        Raises
        ------
        gpal.RunStoppedError
            The server closed the connection after sending a structure and before asking
            for its forces (it crashed or was killed). A close without i-PI's EXIT at any
            other moment ends the run, with ``ended_by = "disconnect"`` (i-PI sends EXIT
            when its run ends or it is stopped: ``gpal ipi`` exits with 1 without it).
            Also those of :meth:`irun`.
        """
        from ..exceptions import RunStoppedError

        for _ in self.irun():
            pass
        if self.ended_by != "EXIT" and self._client.state == "HAVEDATA":
            raise RunStoppedError(f"the i-PI server closed the connection before asking for the forces of the "
                            f"structure it sent (it may have crashed); {self.n_evaluations} evaluations made")
        return self.n_evaluations

    def close(self) -> None:
        """Close the connection (i-PI then drops this client and waits for another; what
        i-PI has sent is read first, see :class:`_Client`)."""
        self._client.close()


def serve_ipi(model, template: Atoms | None = None, **kwargs) -> int:
    """Connect ``model`` to an i-PI server and answer it until the run ends.

    Parameters are those of :class:`IPIClient`. Returns the number of structures
    evaluated.
    """
    return IPIClient(model, template, **kwargs).run()
