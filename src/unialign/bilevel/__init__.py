"""Bilevel optimisation, generic: implicit-differentiation hypergradients (HVP, CG, Neumann) and
exact tabular problems to check them against. Imports no engine: the SAC-specific A-PARL
estimator lives in :mod:`unialign.control.aparl`."""
