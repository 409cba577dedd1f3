"""fastmb for scikit-learn users: see :mod:`fastmb.adapters.sklearn` (``pip install
"fastmb[sklearn]"``)."""

from .adapters.sklearn import MLPClassifier, MLPRegressor, SGDClassifier, SGDRegressor

__all__ = ["MLPClassifier", "MLPRegressor", "SGDClassifier", "SGDRegressor"]
