"""Bilevel optimisation: implicit-differentiation hypergradients and A-PARL."""
