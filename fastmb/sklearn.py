"""fastmb for scikit-learn users: see :mod:`fastmb.adapters.sklearn` (``pip install
"fastmb[sklearn]"``)."""

from .adapters.sklearn import SGDClassifier, SGDRegressor

__all__ = ["SGDClassifier", "SGDRegressor"]
