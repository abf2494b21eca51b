"""effnet search: the paper's grid search for alpha, beta, gamma and the scaling study.

    from effnet_jax.search import SearchSettings, search, StudySettings, study

    choice = search(SearchSettings(alphas=(1.0, 1.2), betas=(1.0, 1.1), gammas=(1.0, 1.15),
                                   overrides=("steps=500",)), "runs/search")
    study(StudySettings(coefficients=(choice["alpha"], choice["beta"], choice["gamma"])), "runs/scaling")

Importing this package loads no jax: the runs happen in child processes (`runner`).
"""

from .search import SearchSettings, make_plan, search
from .study import StudySettings, study

__all__ = ["SearchSettings", "StudySettings", "make_plan", "search", "study"]
