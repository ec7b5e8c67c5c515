"""Descriptors of atomic environments: the contract, SOAP, and the neighbour list.

:mod:`gpal.descriptors.base`
    :class:`Descriptor` (what the model needs: ``create``, pair ``derivatives``,
    ``expand``), :class:`PairDerivatives`, and the registry a model file names its
    descriptor by (:func:`descriptor_from_dict`).
:mod:`gpal.descriptors.soap`
    :class:`SOAP`, dscribe's gto power spectrum with analytic derivatives
    (``SOAP.from_dscribe`` / ``to_dscribe``), :func:`pair_forces`, :func:`pair_stress`.
:mod:`gpal.descriptors.neighbors`
    Cell-list neighbour search (linear in atoms) shared by the descriptor and the model.
"""

from .base import Descriptor, PairDerivatives, PairExpansion, descriptor_from_dict, descriptor_types  # noqa: F401
from .soap import SOAP, SOAPDerivatives, SOAPExpansion, pair_forces, pair_stress  # noqa: F401

__all__ = ["Descriptor", "PairDerivatives", "PairExpansion", "descriptor_from_dict", "descriptor_types",
           "SOAP", "SOAPDerivatives", "SOAPExpansion", "pair_forces", "pair_stress"]
