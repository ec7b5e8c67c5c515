"""What gpal's model needs from a descriptor, and the registry that saves and loads them.

A descriptor maps every atom's environment to a feature vector ``X[i]`` (shape
``(n_features,)``) that depends on the neighbours within a cutoff. The model needs:

- ``species_numbers_`` (sorted atomic numbers it knows) and ``periodic``;
- :meth:`Descriptor.create`: ``X`` of shape ``(n_atoms, n_features)``;
- :meth:`Descriptor.derivatives`: ``X`` and its derivatives on neighbour pairs
  (:class:`PairDerivatives`: ``dX[p] = d X[center[p]] / d vector[p]``), from which
  forces and stress follow (:func:`gpal.descriptors.pair_forces`, ``pair_stress``);
- :meth:`Descriptor.expand`: what a prediction needs to turn ``dE/dX`` into
  ``dE/dvector`` (:class:`PairExpansion.backward`). The default contracts the pair
  derivatives; SOAP overrides it with an adjoint pass that never forms them.

Subclasses of :class:`Descriptor` are registered under their class name when they are
defined; a model file names its descriptor by that name and its JSON parameters
(``get_params()``), and :func:`descriptor_from_dict` rebuilds it. Loading never imports
code: a descriptor class defined outside gpal must be defined (its module imported)
before a model using it is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.base import BaseEstimator

from .._registry import register

__all__ = ["Descriptor", "PairDerivatives", "PairExpansion", "descriptor_from_dict", "descriptor_types"]

_REGISTRY: dict[str, type] = {}


@dataclass
class PairDerivatives:
    """Descriptor rows and their derivatives on neighbour pairs (one frame).

    Attributes
    ----------
    descriptor : ndarray of shape (n_atoms, n_features)
    center, neighbor : ndarray of shape (n_pairs,), int64
        Pair p is the centre atom ``center[p]`` and an image of ``neighbor[p]``; pairs are
        sorted by centre and exclude the zero-distance self pair.
    vector : ndarray of shape (n_pairs, 3)
        ``r_neighbor + shift - r_center`` (Å).
    dX : ndarray of shape (n_pairs, 3, n_features)
        ``d descriptor[center[p]] / d vector[p]`` (1/Å).
    offsets : ndarray of shape (n_atoms + 1,), int64
        Centre i owns pairs ``offsets[i]:offsets[i + 1]``.
    volume : float
        Cell volume (Å³), nan without a cell.
    numbers : ndarray of shape (n_atoms,), int64
    """

    descriptor: np.ndarray
    center: np.ndarray
    neighbor: np.ndarray
    vector: np.ndarray
    dX: np.ndarray
    offsets: np.ndarray
    volume: float
    numbers: np.ndarray

    @property
    def n_atoms(self) -> int:
        return self.descriptor.shape[0]


@dataclass
class PairExpansion:
    """A prediction's forward pass: descriptor rows and the pairs to back-propagate through."""

    descriptor: np.ndarray
    center: np.ndarray
    neighbor: np.ndarray
    vector: np.ndarray
    offsets: np.ndarray
    numbers: np.ndarray
    volume: float
    dX: np.ndarray

    @classmethod
    def from_derivatives(cls, d) -> "PairExpansion":
        return cls(d.descriptor, d.center, d.neighbor, d.vector, d.offsets, d.numbers, d.volume, d.dX)

    @property
    def n_atoms(self) -> int:
        return self.descriptor.shape[0]

    def backward(self, G) -> np.ndarray:
        """``dE/dvector`` of shape (n_pairs, 3) for ``E = Σ_i G[i] · X[i]``, G of shape (n_atoms, n_features).

        Parameters
        ----------
        G : array_like of shape (n_atoms, n_features)
            ``dE/dX`` of each atom's descriptor row (eV per descriptor unit for an
            energy, e.g. a kernel's weighted gradient).

        Returns
        -------
        ndarray of shape (n_pairs, 3)
            ``dE/dvector[p] = dX[p] · G[center[p]]``, eV/Å for an energy in eV; forces
            and stress follow by :func:`gpal.descriptors.pair_forces` and
            :func:`gpal.descriptors.pair_stress`.

        Raises
        ------
        ValueError
            ``G`` is not of the descriptor's shape (n_atoms, n_features).
        """
        G = np.asarray(G, dtype=np.float64)
        if G.shape != self.descriptor.shape:
            raise ValueError(f"G must have shape {self.descriptor.shape} (n_atoms, n_features), got {G.shape}.")
        return np.einsum("pcf,pf->pc", self.dX, G[self.center])


class Descriptor(BaseEstimator):
    """Base class of gpal's descriptors (see the module docstring for the contract).

    A subclass stores its constructor arguments under their own names (scikit-learn's
    convention: ``get_params``, ``set_params`` and ``sklearn.base.clone`` then work),
    sets ``species_numbers_`` (sorted atomic numbers) and ``periodic``, and implements
    :meth:`create` and :meth:`derivatives`. Its ``get_params()`` must be JSON-able: it is
    what a model file keeps.
    """

    species_numbers_: np.ndarray
    periodic: bool

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        register(_REGISTRY, cls, "descriptor")

    def create(self, atoms) -> np.ndarray:
        """Descriptor rows, ndarray of shape (n_atoms, n_features).

        Parameters
        ----------
        atoms : ase.Atoms
            One structure (positions in Å); its species among ``species_numbers_``.

        Returns
        -------
        ndarray of shape (n_atoms, n_features)
            Row i describes atom i's environment within the cutoff.

        Raises
        ------
        NotImplementedError
            Always, here: a subclass implements it.
        """
        raise NotImplementedError

    def derivatives(self, atoms) -> PairDerivatives:
        """Descriptor rows and their pair derivatives (:class:`PairDerivatives`).

        Parameters
        ----------
        atoms : ase.Atoms
            One structure (positions in Å).

        Returns
        -------
        PairDerivatives
            ``descriptor`` (n_atoms, n_features), the neighbour pairs (``center``,
            ``neighbor``, ``vector`` in Å, ``offsets``), ``dX`` (n_pairs, 3,
            n_features) in 1/Å, ``volume`` (Å³, nan without a cell) and ``numbers``.

        Raises
        ------
        NotImplementedError
            Always, here: a subclass implements it.
        """
        raise NotImplementedError

    def expand(self, atoms):
        """Forward pass of a prediction; by default the pair derivatives themselves.

        Parameters
        ----------
        atoms : ase.Atoms
            One structure (positions in Å).

        Returns
        -------
        PairExpansion
            Here :meth:`derivatives`' arrays (the descriptor rows, pairs and ``dX``),
            whose :meth:`PairExpansion.backward` contracts ``dX``; a subclass may
            return its own expansion with a ``backward`` of the same signature (SOAP's
            adjoint pass).
        """
        return PairExpansion.from_derivatives(self.derivatives(atoms))

    def to_dict(self) -> dict:
        """``{"type": class name, "params": get_params()}``: the form a model file keeps."""
        return {"type": type(self).__name__, "params": self.get_params()}


def descriptor_types() -> list[str]:
    """Names of the registered descriptor classes."""
    return sorted(_REGISTRY)


def descriptor_from_dict(d: dict) -> Descriptor:
    """Rebuild a descriptor from :meth:`Descriptor.to_dict` output.

    Parameters
    ----------
    d : dict
        ``{"type": class name, "params": {...}}``; a dict without ``"type"`` is read as
        a ``"SOAP"``.

    Returns
    -------
    Descriptor
        ``cls(**d["params"])`` of the registered class named ``d["type"]``.

    Raises
    ------
    ValueError
        A malformed dict, or a type no registered class has (the known ones are listed).
    """
    if not isinstance(d, dict) or "params" not in d:
        raise ValueError("a descriptor dict needs the key 'params' (and 'type', which defaults to 'SOAP')")
    name = d.get("type", "SOAP")
    cls = _REGISTRY.get(name)
    if cls is None:
        raise ValueError(f"unknown descriptor type {name!r}: define (import) its class before loading; "
                         f"known: {', '.join(descriptor_types())}")
    return cls(**d["params"])
