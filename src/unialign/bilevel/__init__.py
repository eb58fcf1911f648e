"""Bilevel optimisation, generic: implicit-differentiation hypergradients (HVP, CG, Neumann)
(:mod:`.hypergrad`), exact problems to check them against (the entropy-regularised bandit in
:mod:`.tabular`, the soft linear-quadratic control problem in :mod:`.lq`), and BARFI's blended
reward with its hypergradient (:mod:`.barfi`). Imports no engine: the SAC-specific A-PARL
estimator lives in :mod:`unialign.control.aparl`, the language-model one in
:mod:`unialign.lm.refit_aparl`."""
