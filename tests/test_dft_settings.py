"""gpal.dft.PySCF's settings are checked when it is made (no PySCF needed for these)."""

from __future__ import annotations

import pytest

from gpal.dft import PySCF


@pytest.mark.parametrize("kwargs, match", [
    # each of these ran: as charge 2, as spin 1, with density fitting, with 10 cycles
    (dict(charge=2.5), "charge must be an integer, got 2.5"),
    (dict(charge="one"), "charge must be an integer, got 'one'"),
    (dict(spin=1.5), r"spin \(2S, unpaired electrons\) must be an integer >= 0, got 1.5"),
    (dict(spin=-1), "spin .* >= 0, got -1"),
    (dict(density_fit="false"), "density_fit must be true or false, got 'false'"),
    (dict(reuse_guess="yes"), "reuse_guess must be true or false, got .yes."),
    (dict(max_cycle=10.7), "max_cycle must be an integer >= 1, got 10.7"),
    (dict(threads="2"), "threads must be an integer >= 1 or None, got '2'"),
    (dict(conv_tol=-1.0), "conv_tol must be a finite number > 0 Ha"),
    (dict(grid_level=42), "grid_level must be 0-9, got 42"),
    (dict(xc=3), "xc must be a functional's name, got 3"),
    (dict(basis=3), "basis must be a basis set's name or a dict by element, got 3"),
    (dict(auxbasis=1.0), "auxbasis must be .* or None, got 1.0"),
])
def test_settings_of_the_wrong_kind_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PySCF(**kwargs)


def test_settings_of_the_right_kind_are_kept():
    import numpy as np

    calc = PySCF(charge=np.int64(-1), spin=2, density_fit=np.bool_(False), threads=None, basis={"O": "sto-3g"})
    p = calc.parameters
    assert (p["charge"], p["spin"], p["density_fit"]) == (-1, 2, False)
    assert type(p["charge"]) is int and type(p["density_fit"]) is bool
    assert PySCF(threads=0).parameters["threads"] is None  # (0 left the process's setting, as None)


@pytest.mark.parametrize("kw", [dict(charge=1.5), dict(spin=1.7), dict(density_fit="false"), dict(charge="1")])
def test_pyscf_oracle_refuses_what_pyscf_refuses(kw):
    """pyscf_oracle made int(1.5), int(1.7), bool("false") of them before the checks: a spec
    of a charge, spin or method nobody asked for (PySCF(...) and [oracle] kwargs refuse)."""
    from gpal.dft import pyscf_oracle

    with pytest.raises(ValueError, match="PySCF (charge|spin|density_fit)"):
        pyscf_oracle("PBE", "sto-3g", **kw)
    assert pyscf_oracle("PBE", "sto-3g", charge=1, spin=1).kwargs["charge"] == 1
