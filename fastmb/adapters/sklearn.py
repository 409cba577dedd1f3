"""scikit-learn estimators on fastmb's kernels (``pip install "fastmb[sklearn]"``).

:class:`SGDClassifier` and :class:`SGDRegressor` take scikit-learn's constructor arguments
and give its methods and fitted attributes. Their epochs run in one Numba kernel each
(``kernels/linear_sgd.py``), which is scikit-learn's plain SGD step for step: with the same
settings and ``shuffle=False`` they reach scikit-learn's coefficients (to float rounding),
and its ``n_iter_``. What differs:

* shuffling draws its own permutations (NumPy's generator seeded by ``random_state``), so
  shuffled runs differ from scikit-learn's run by run, not in distribution;
* early stopping scores the validation set with the current weights (scikit-learn's
  callback reads the weights before their running scale is applied, and the 0/1 targets of
  ``log_loss`` against the classes -1/1);
* ``average`` (ASGD) and the passive-aggressive learning rates (``pa1``, ``pa2``) are not
  implemented: they raise ``ValueError``;
* ``n_jobs`` is accepted; the classes of a multiclass problem are fitted one after the
  other.

Sparse ``X`` (CSR, or any SciPy format, converted once) costs its stored entries per epoch.
"""

from __future__ import annotations

import numbers
import warnings

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import r2_score
from sklearn.model_selection import ShuffleSplit, StratifiedShuffleSplit
from sklearn.utils import check_random_state, compute_class_weight
from sklearn.utils.extmath import safe_sparse_dot
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data

from .. import _validation as V
from ..kernels import linear_sgd as K
from ..learn import gradients as G
from ..learn.options import TrainOptions
from ..learn.training import EpochTrainer
from ..models import MLP, Linear

_CLASSIFIER_LOSSES = {"hinge": (K.HINGE, 1.0), "squared_hinge": (K.SQUARED_HINGE, 1.0),
                      "perceptron": (K.HINGE, 0.0), "log_loss": (K.LOG_LOSS, 0.0),
                      "modified_huber": (K.MODIFIED_HUBER, 0.0)}
_REGRESSION_LOSSES = {"squared_error": (K.SQUARED_ERROR, None), "huber": (K.HUBER, None),
                      "epsilon_insensitive": (K.EPSILON_INSENSITIVE, None),
                      "squared_epsilon_insensitive": (K.SQUARED_EPSILON_INSENSITIVE, None)}
_PENALTIES = {None: K.NO_PENALTY, "l1": K.L1, "l2": K.L2, "elasticnet": K.ELASTICNET}
_LEARNING_RATES = {"constant": K.CONSTANT, "optimal": K.OPTIMAL, "invscaling": K.INVSCALING,
                   "adaptive": K.ADAPTIVE}


def _number(name, value, low, high=None, integer=False, low_open=False):
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, kind):
        raise TypeError(f"The '{name}' parameter must be {'an int' if integer else 'a float'}, "
                        f"got {value!r}")
    if value < low or (low_open and value == low) or (high is not None and value > high):
        span = f"{'(' if low_open else '['}{low}, {'inf)' if high is None else f'{high}]'}"
        raise ValueError(f"The '{name}' parameter must be in {span}, got {value!r}")
    return value


def _keep_arguments(estimator, arguments):
    """Store a constructor's arguments (its ``locals()``) as attributes of the same names,
    unchanged: scikit-learn's rule for an estimator's ``__init__``, whose explicit signature
    ``get_params`` reads."""
    for name, value in arguments.items():
        if name != "self":
            setattr(estimator, name, value)


class _SparseInput(BaseEstimator):
    """fastmb's estimators take SciPy sparse X (CSR, or converted to it once)."""

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags


class _BaseSGD(_SparseInput):
    """What the classifier and the regressor share: the checks, one binary problem's fit."""

    _losses: dict = {}

    def _check_params(self):
        if self.loss not in self._losses:
            raise ValueError(f"The 'loss' parameter must be one of {sorted(self._losses)}, got "
                             f"{self.loss!r}")
        if self.penalty not in _PENALTIES:
            raise ValueError(f"The 'penalty' parameter must be one of 'l1', 'l2', "
                             f"'elasticnet' or None, got {self.penalty!r}")
        if self.learning_rate in ("pa1", "pa2"):
            raise ValueError(f"learning_rate={self.learning_rate!r} (passive-aggressive) is not "
                             "implemented in fastmb; use scikit-learn's SGD estimators for it")
        if self.learning_rate not in _LEARNING_RATES:
            raise ValueError(f"The 'learning_rate' parameter must be one of "
                             f"{sorted(_LEARNING_RATES)}, got {self.learning_rate!r}")
        if self.average is not False and self.average != 0:
            raise ValueError("average (ASGD) is not implemented in fastmb; use average=False")
        _number("alpha", self.alpha, 0.0)
        _number("l1_ratio", self.l1_ratio, 0.0, 1.0)
        _number("max_iter", self.max_iter, 1, integer=True)
        if self.tol is not None:
            _number("tol", self.tol, 0.0)
        _number("epsilon", self.epsilon, 0.0)
        _number("eta0", self.eta0, 0.0)
        _number("power_t", self.power_t, -np.inf)
        _number("validation_fraction", self.validation_fraction, 0.0, 1.0, low_open=True)
        if self.validation_fraction >= 1.0:
            raise ValueError(f"The 'validation_fraction' parameter must be in (0, 1), got "
                             f"{self.validation_fraction!r}")
        _number("n_iter_no_change", self.n_iter_no_change, 1, integer=True)
        for flag in ("fit_intercept", "shuffle", "early_stopping", "warm_start"):
            if not isinstance(getattr(self, flag), (bool, np.bool_)):
                raise TypeError(f"The '{flag}' parameter must be a bool, got "
                                f"{getattr(self, flag)!r}")
        if self.learning_rate == "optimal" and self.alpha == 0:
            raise ValueError("alpha must be > 0 since learning_rate is 'optimal'. alpha is "
                             "used to compute the optimal learning rate.")
        if self.learning_rate != "optimal" and self.eta0 <= 0.0:
            raise ValueError(f"eta0 must be > 0 with learning_rate={self.learning_rate!r}")

    def _kernel_X(self, X):
        """``X`` as the kernel reads it (a dense C array, or sparse rows)."""
        return V.as_X(Linear(X.shape[1]), X, X.dtype)

    def _spec(self, kind, param, pos_weight, neg_weight, intercept_decay):
        l1_ratio = {"l2": 0.0, "l1": 1.0}.get(self.penalty, float(self.l1_ratio))
        optimal_init = 0.0
        if self.learning_rate == "optimal":
            typw = np.sqrt(1.0 / np.sqrt(self.alpha))
            initial_eta0 = typw / max(1.0, K.loss_gradient(kind, param, 1.0, -typw))
            optimal_init = 1.0 / (initial_eta0 * self.alpha)
        return (kind, float(param), _PENALTIES[self.penalty], float(self.alpha), l1_ratio,
                _LEARNING_RATES[self.learning_rate], float(self.eta0), float(self.power_t),
                float(optimal_init), bool(self.fit_intercept), float(intercept_decay),
                float(pos_weight), float(neg_weight))

    def _validation_mask(self, y, sample_weight):
        mask = np.zeros(y.shape[0], dtype=bool)
        if not self.early_stopping:
            return mask
        split = StratifiedShuffleSplit if isinstance(self, ClassifierMixin) else ShuffleSplit
        cv = split(test_size=self.validation_fraction, random_state=self.random_state)
        idx_train, idx_val = next(cv.split(np.zeros((y.shape[0], 1)), y))
        if not np.any(sample_weight[idx_val] > 0):
            raise ValueError("The sample weights for validation set are all zero, consider "
                             "using a different random state.")
        if idx_train.shape[0] == 0 or idx_val.shape[0] == 0:
            raise ValueError(
                f"Splitting {y.shape[0]} samples into a train set and a validation set with "
                f"validation_fraction={self.validation_fraction!r} led to an empty set "
                f"({idx_train.shape[0]} and {idx_val.shape[0]} samples). Please either "
                "change validation_fraction, increase number of samples, or disable "
                "early_stopping.")
        mask[idx_val] = True
        return mask

    def _score(self, Xs, y, sw, w, b):
        """The validation score of weights ``w`` and intercept ``b`` (early stopping)."""
        scores = safe_sparse_dot(Xs, w) + b
        if isinstance(self, ClassifierMixin):
            return float(np.average((scores > 0) == (y > 0), weights=sw))
        return r2_score(y, scores, sample_weight=sw)

    def _fit_binary(self, Xk, Xs, y, sw, coef, intercept, max_iter, spec, mask, rng):
        """Fit one linear output in place in ``coef``; returns ``(intercept, n_iter)``.

        ``Xk`` is the kernel's form of ``X``, ``Xs`` the validated array (for scoring)."""
        w = coef
        state = np.array([intercept, 1.0, self.t_, 0.0, self.eta0, float(np.dot(w, w)),
                          float(np.abs(w).sum())])
        use_l1 = self.penalty in ("l1", "elasticnet")
        q = np.zeros(w.shape[0] if use_l1 else 0, w.dtype)
        train = np.flatnonzero(~mask)
        val = np.flatnonzero(mask)
        reset_below = 1e-9 if w.dtype == np.float64 else 1e-6
        tol = -np.inf if self.tol is None else self.tol
        best_obj, best_score, no_improvement = np.inf, -np.inf, 0
        epoch = 0
        for epoch in range(max_iter):
            order = rng.permutation(train) if self.shuffle else train
            sumloss, objective, finite = K.sgd_epoch(w, state, q, Xk, y, sw, order, spec,
                                                     reset_below)
            if self.verbose:
                print(f"-- Epoch {epoch + 1}\nNorm: {np.linalg.norm(w) * state[1]:.2f}, "
                      f"Bias: {state[0]:.6f}, T: {int(state[2]) - 1}, Avg. loss: "
                      f"{sumloss / max(train.size, 1):f}")
            if not finite:
                raise ValueError(f"Floating-point under-/overflow occurred at epoch #{epoch + 1}. "
                                 "Scaling input data with StandardScaler or MinMaxScaler "
                                 "might help.")
            if self.early_stopping and val.size:
                score = self._score(Xs[val], y[val], sw[val], w * state[1], state[0])
                no_improvement = no_improvement + 1 if score < best_score + tol else 0
                best_score = max(best_score, score)
            else:
                mean_obj = objective / max(train.size, 1)
                no_improvement = no_improvement + 1 if mean_obj > best_obj - tol else 0
                best_obj = min(best_obj, mean_obj)
            if no_improvement >= self.n_iter_no_change:
                if self.learning_rate == "adaptive" and state[4] > 1e-6:
                    state[4] /= 5
                    no_improvement = 0
                else:
                    break
        K.unscale(w, state[1])
        return float(state[0]), epoch + 1

    def _prepare(self, X, y, sample_weight, reset, y_numeric):
        X, y = validate_data(self, X, y, accept_sparse="csr", dtype=[np.float64, np.float32],
                             order="C", accept_large_sparse=False, reset=reset,
                             y_numeric=y_numeric)
        # writable copies: a read-only array would compile the kernel once more
        sw = np.array(_check_sample_weight(sample_weight, X, dtype=np.float64))
        return X, y, sw

    def _start(self, X, coef_init, intercept_init, reset, shape):
        """The coefficients (of ``shape``) and intercepts a fit starts from: the given ones
        (checked), the fitted ones when continuing, or zeros; starts the step count."""
        rows = shape[0] if len(shape) == 2 else 1
        if coef_init is not None:
            coef = np.array(coef_init, dtype=X.dtype, order="C")
            if coef.size != int(np.prod(shape)) or coef.ndim > 2:
                raise ValueError(f"Provided coef_init does not match dataset: expected shape "
                                 f"{shape}, got {coef.shape}")
            coef = coef.reshape(shape)
        elif not reset and hasattr(self, "coef_"):
            coef = np.array(self.coef_, dtype=X.dtype, order="C")
        else:
            coef = np.zeros(shape, X.dtype)
        if intercept_init is not None:
            intercept = np.array(intercept_init, dtype=X.dtype).reshape(-1)
            if intercept.shape != (rows,):
                raise ValueError("Provided intercept_init does not match dataset.")
        elif not reset and hasattr(self, "intercept_"):
            intercept = np.array(self.intercept_, dtype=X.dtype)
        else:
            intercept = np.zeros(rows, X.dtype)
        if not hasattr(self, "t_"):
            self.t_ = 1.0
        return coef, intercept

    def _rng(self):
        return np.random.default_rng(check_random_state(self.random_state).randint(2**31 - 1))

    def _warn_if_not_converged(self):
        if self.tol is not None and self.n_iter_ == self.max_iter:
            warnings.warn("Maximum number of iteration reached before convergence. Consider "
                          "increasing max_iter to improve the fit.", ConvergenceWarning,
                          stacklevel=3)


class SGDClassifier(ClassifierMixin, _BaseSGD):
    """Linear classifiers trained by SGD, as ``sklearn.linear_model.SGDClassifier``.

    The same arguments, methods and fitted attributes as scikit-learn's estimator (see its
    documentation), on fastmb's kernel; the differences are listed in
    :mod:`fastmb.adapters.sklearn`. Several classes are fitted one-vs-rest.

    Examples
    --------
    >>> import numpy as np
    >>> from fastmb.sklearn import SGDClassifier
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(300, 4))
    >>> y = (X[:, 0] + X[:, 1] > 0).astype(int)
    >>> clf = SGDClassifier(loss="log_loss", random_state=0).fit(X, y)
    >>> clf.coef_.shape, float(clf.score(X, y)) > 0.9
    ((1, 4), True)
    """

    _losses = {**_CLASSIFIER_LOSSES, **_REGRESSION_LOSSES}

    def __init__(self, loss="hinge", *, penalty="l2", alpha=0.0001, l1_ratio=0.15,
                 fit_intercept=True, max_iter=1000, tol=0.001, shuffle=True, verbose=0,
                 epsilon=0.1, n_jobs=None, random_state=None, learning_rate="optimal",
                 eta0=0.01, power_t=0.5, early_stopping=False, validation_fraction=0.1,
                 n_iter_no_change=5, class_weight=None, warm_start=False, average=False):
        _keep_arguments(self, locals())

    def fit(self, X, y, coef_init=None, intercept_init=None, sample_weight=None):
        """Fit by SGD for ``max_iter`` epochs at most (scikit-learn's stopping rule)."""
        self._check_params()
        if hasattr(self, "classes_"):
            del self.classes_
        warm = self.warm_start and hasattr(self, "coef_")
        if warm:
            coef_init = self.coef_ if coef_init is None else coef_init
            intercept_init = self.intercept_ if intercept_init is None else intercept_init
        self.t_ = 1.0
        self._partial_fit(X, y, None, sample_weight, self.max_iter, coef_init, intercept_init,
                          reset=True)
        self._warn_if_not_converged()
        return self

    def partial_fit(self, X, y, classes=None, sample_weight=None):
        """One epoch over ``(X, y)``; the first call needs ``classes``."""
        first = not hasattr(self, "classes_")
        if first:
            self._check_params()
            if classes is None:
                raise ValueError("classes must be passed on the first call to partial_fit.")
        elif classes is not None and not np.array_equal(np.unique(classes), self.classes_):
            raise ValueError(f"`classes={classes!r}` is not the same as on last call to "
                             f"partial_fit, was: {self.classes_!r}")
        return self._partial_fit(X, y, classes, sample_weight, 1, None, None, reset=first)

    def _partial_fit(self, X, y, classes, sample_weight, max_iter, coef_init, intercept_init,
                     reset):
        X, y, sw = self._prepare(X, y, sample_weight, reset, y_numeric=False)
        check_classification_targets(y)
        if reset:
            self.classes_ = np.unique(y if classes is None else classes)
        if not np.isin(np.unique(y), self.classes_).all():
            raise ValueError(f"y has classes {np.setdiff1d(np.unique(y), self.classes_)!r} "
                             f"that are not in classes {self.classes_!r}")
        n_classes = self.classes_.shape[0]
        if n_classes < 2:
            raise ValueError(f"The number of classes has to be greater than one; got "
                             f"{n_classes} class")
        weights = compute_class_weight(self.class_weight, classes=self.classes_, y=y)
        rows = 1 if n_classes == 2 else n_classes
        coef, intercept = self._start(X, coef_init, intercept_init, reset,
                                      (rows, X.shape[1]))
        Xk = self._kernel_X(X)
        kind, param = self._losses[self.loss]
        param = self.epsilon if param is None else param
        decay = 0.01 if V.is_sparse(X) else 1.0  # scikit-learn's SPARSE_INTERCEPT_DECAY
        mask = self._validation_mask(y, sw)
        rng = self._rng()
        n_iters = []
        for i in range(rows):
            positive = self.classes_[1] if rows == 1 else self.classes_[i]
            pos = y == positive
            y_i = np.where(pos, 1.0, 0.0 if kind == K.LOG_LOSS else -1.0)
            pw, nw = (weights[1], weights[0]) if rows == 1 else (weights[i], 1.0)
            spec = self._spec(kind, param, pw, nw, decay)
            b, n_iter = self._fit_binary(Xk, X, y_i, sw, coef[i], float(intercept[i]),
                                         max_iter, spec, mask, rng)
            intercept[i] = b
            n_iters.append(n_iter)
        self.coef_, self.intercept_ = coef, intercept
        self.n_iter_ = max(n_iters)
        self.t_ += self.n_iter_ * X.shape[0]
        return self

    def decision_function(self, X):
        """Signed distances to the hyperplanes, ``(n,)`` for two classes, else
        ``(n, n_classes)``."""
        check_is_fitted(self)
        X = validate_data(self, X, accept_sparse="csr", reset=False,
                          dtype=[np.float64, np.float32])
        scores = safe_sparse_dot(X, self.coef_.T, dense_output=True) + self.intercept_
        return scores.ravel() if scores.shape[1] == 1 else scores

    def predict(self, X):
        """The class of each row."""
        scores = self.decision_function(X)
        idx = (scores > 0).astype(int) if scores.ndim == 1 else scores.argmax(axis=1)
        return self.classes_[idx]

    def _has_proba(self):
        if self.loss not in ("log_loss", "modified_huber"):
            raise AttributeError(f"probability estimates are not available for loss="
                                 f"{self.loss!r}")
        return True

    @available_if(_has_proba)
    def predict_proba(self, X):
        """Class probabilities (``log_loss``: one-vs-rest sigmoids, normalized;
        ``modified_huber``: scikit-learn's clipped scores), as scikit-learn computes them."""
        scores = self.decision_function(X)
        binary = scores.ndim == 1
        if self.loss == "log_loss":
            prob = 1.0 / (1.0 + np.exp(-scores))
            if binary:
                return np.column_stack([1 - prob, prob])
            return prob / prob.sum(axis=1).reshape(-1, 1)
        prob = (np.clip(scores, -1, 1) + 1.0) / 2.0
        if binary:
            return np.column_stack([1 - prob, prob])
        total = prob.sum(axis=1)
        zero = total == 0
        prob[zero, :] = 1
        total[zero] = len(self.classes_)
        return prob / total.reshape(-1, 1)

    @available_if(_has_proba)
    def predict_log_proba(self, X):
        """``log(predict_proba(X))``."""
        return np.log(self.predict_proba(X))


class SGDRegressor(RegressorMixin, _BaseSGD):
    """Linear regression trained by SGD, as ``sklearn.linear_model.SGDRegressor``.

    The same arguments, methods and fitted attributes as scikit-learn's estimator, on
    fastmb's kernel; the differences are listed in :mod:`fastmb.adapters.sklearn`.

    Examples
    --------
    >>> import numpy as np
    >>> from fastmb.sklearn import SGDRegressor
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(500, 3))
    >>> y = X @ [1.0, -2.0, 0.5] + 3.0
    >>> reg = SGDRegressor(random_state=0).fit(X, y)
    >>> np.round(reg.coef_, 1), np.round(reg.intercept_, 1)
    (array([ 1. , -2. ,  0.5]), array([3.]))
    """

    _losses = _REGRESSION_LOSSES

    def __init__(self, loss="squared_error", *, penalty="l2", alpha=0.0001, l1_ratio=0.15,
                 fit_intercept=True, max_iter=1000, tol=0.001, shuffle=True, verbose=0,
                 epsilon=0.1, random_state=None, learning_rate="invscaling", eta0=0.01,
                 power_t=0.25, early_stopping=False, validation_fraction=0.1,
                 n_iter_no_change=5, warm_start=False, average=False):
        _keep_arguments(self, locals())

    def fit(self, X, y, coef_init=None, intercept_init=None, sample_weight=None):
        """Fit by SGD for ``max_iter`` epochs at most (scikit-learn's stopping rule)."""
        self._check_params()
        if self.warm_start and hasattr(self, "coef_"):
            coef_init = self.coef_ if coef_init is None else coef_init
            intercept_init = self.intercept_ if intercept_init is None else intercept_init
        self.t_ = 1.0
        self._partial_fit(X, y, sample_weight, self.max_iter, coef_init, intercept_init,
                          reset=True)
        self._warn_if_not_converged()
        return self

    def partial_fit(self, X, y, sample_weight=None):
        """One epoch over ``(X, y)``."""
        first = not hasattr(self, "coef_")
        if first:
            self._check_params()
        return self._partial_fit(X, y, sample_weight, 1, None, None, reset=first)

    def _partial_fit(self, X, y, sample_weight, max_iter, coef_init, intercept_init, reset):
        X, y, sw = self._prepare(X, y, sample_weight, reset, y_numeric=True)
        y = np.array(y, dtype=np.float64)
        coef, intercept = self._start(X, coef_init, intercept_init, reset, (X.shape[1],))
        kind, _ = self._losses[self.loss]
        decay = 0.01 if V.is_sparse(X) else 1.0
        spec = self._spec(kind, self.epsilon, 1.0, 1.0, decay)
        b, n_iter = self._fit_binary(self._kernel_X(X), X, y, sw, coef, float(intercept[0]),
                                     max_iter, spec, self._validation_mask(y, sw), self._rng())
        intercept[0] = b
        self.coef_, self.intercept_, self.n_iter_ = coef, intercept, n_iter
        self.t_ += n_iter * X.shape[0]
        return self

    def predict(self, X):
        """``X @ coef_ + intercept_``."""
        check_is_fitted(self)
        X = validate_data(self, X, accept_sparse="csr", reset=False,
                          dtype=[np.float64, np.float32])
        return safe_sparse_dot(X, self.coef_, dense_output=True) + self.intercept_[0]


_MLP_ACTIVATIONS = {"identity": "identity", "logistic": "sigmoid", "tanh": "tanh",
                    "relu": "relu"}


class _BaseMLP(_SparseInput):
    """What MLPClassifier and MLPRegressor share: scikit-learn's initialization, the epoch
    loop with its stopping rule, the flat parameters and ``coefs_``/``intercepts_`` views."""

    def _check_params(self):
        if self.solver == "lbfgs":
            raise ValueError("solver='lbfgs' is not implemented in fastmb; use 'adam' or "
                             "'sgd'")
        if self.solver not in ("adam", "sgd"):
            raise ValueError(f"The 'solver' parameter must be 'adam' or 'sgd', got "
                             f"{self.solver!r}")
        if self.activation not in _MLP_ACTIVATIONS:
            raise ValueError(f"The 'activation' parameter must be one of "
                             f"{sorted(_MLP_ACTIVATIONS)}, got {self.activation!r}")
        if self.learning_rate not in ("constant", "invscaling", "adaptive"):
            raise ValueError(f"The 'learning_rate' parameter must be 'constant', 'invscaling' "
                             f"or 'adaptive', got {self.learning_rate!r}")
        sizes = self.hidden_layer_sizes
        sizes = [sizes] if isinstance(sizes, numbers.Integral) else list(sizes)
        for h in sizes:
            _number("hidden_layer_sizes", h, 1, integer=True)
        _number("alpha", self.alpha, 0.0)
        _number("learning_rate_init", self.learning_rate_init, 0.0, low_open=True)
        _number("power_t", self.power_t, 0.0)
        _number("max_iter", self.max_iter, 1, integer=True)
        _number("tol", self.tol, 0.0)
        _number("momentum", self.momentum, 0.0, 1.0)
        _number("validation_fraction", self.validation_fraction, 0.0, 1.0, low_open=True)
        _number("beta_1", self.beta_1, 0.0, 1.0)
        _number("beta_2", self.beta_2, 0.0, 1.0)
        if self.beta_1 >= 1 or self.beta_2 >= 1 or self.validation_fraction >= 1:
            raise ValueError("beta_1, beta_2 and validation_fraction must be < 1")
        _number("epsilon", self.epsilon, 0.0, low_open=True)
        _number("n_iter_no_change", self.n_iter_no_change, 1, integer=True)
        if self.batch_size != "auto":
            _number("batch_size", self.batch_size, 1, integer=True)
        return sizes

    def _make_model(self, n_in, hidden, n_out, loss):
        if not hidden:
            return Linear(n_in, n_out, loss)
        return MLP([n_in, *hidden, n_out], _MLP_ACTIVATIONS[self.activation], loss)

    def _initial_params(self, model, dtype, rs):
        """scikit-learn's Glorot-uniform start (factor 2 for the logistic activation), drawn
        layer by layer, weights then biases, from the estimator's RandomState."""
        params = np.empty(model.n_params, dtype)
        factor = 2.0 if self.activation == "logistic" else 6.0
        for W, b in model.layers(params):
            fan_in, fan_out = W.shape
            bound = np.sqrt(factor / (fan_in + fan_out))
            W[...] = rs.uniform(-bound, bound, (fan_in, fan_out))
            b[...] = rs.uniform(-bound, bound, fan_out)
        return params

    def _publish(self, model, params):
        self._model, self._params = model, params
        layers = model.layers(params)
        self.coefs_ = [W for W, _ in layers]
        self.intercepts_ = [b for _, b in layers]
        self.n_layers_ = model.n_layers + 1
        self.n_outputs_ = model.n_outputs if model.loss != "logistic" else 1

    def _options(self, batch, lr):
        sgd = self.solver == "sgd"
        return TrainOptions(batch_size=batch, lr=lr, shuffle=bool(self.shuffle),
                            seed=int(self._rs.randint(2**31 - 1)), optimizer=self.solver,
                            betas=(float(self.beta_1), float(self.beta_2)),
                            eps=float(self.epsilon),
                            momentum=float(self.momentum) if sgd else 0.0,
                            nesterov=bool(sgd and self.nesterovs_momentum and self.momentum > 0),
                            l2=float(self.alpha))

    def _penalty(self, n):
        return 0.5 * self.alpha * sum(float(np.dot(W.ravel(), W.ravel())) for W in self.coefs_) / n

    def _fit(self, X, t, model, sw, incremental):
        """``t``: the kernels' labels (class indices) or targets."""
        n = X.shape[0]
        first = not hasattr(self, "_params") or not (incremental or self.warm_start) \
            or self._model != model
        if first:
            self._rs = check_random_state(self.random_state)
            self._resume = None  # the optimizer's state, kept by warm_start and partial_fit
            params = self._initial_params(model, X.dtype, self._rs)
            self.loss_curve_, self.t_, self.n_iter_ = [], 0, 0
            self.best_loss_, self._no_improvement_count = np.inf, 0
            self.validation_scores_, self.best_validation_score_ = [], -np.inf
            self._lr = float(self.learning_rate_init)
        else:
            params = self._params.astype(X.dtype)
        self.n_iter_ = 0  # counts this call's epochs, as scikit-learn's does
        early = self.early_stopping and not incremental
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        train = np.arange(n)
        if early:
            strat = t if isinstance(self, ClassifierMixin) else None
            train, val = next((StratifiedShuffleSplit if strat is not None else ShuffleSplit)(
                test_size=self.validation_fraction, random_state=self._rs).split(
                np.zeros((n, 1)), strat))
            if val.shape[0] < 2:
                raise ValueError("The validation set is too small. Increase "
                                 "'validation_fraction' or the size of your dataset.")
            train = np.sort(train)
        if early:
            Xt, tt = X[train], t[train]
            swt = None if sw is None else sw[train]
        else:  # no copy of the training set
            Xt, tt, swt = X, t, sw
        batch = min(200, train.shape[0]) if self.batch_size == "auto" else \
            int(np.clip(self.batch_size, 1, train.shape[0]))
        if self.batch_size != "auto" and self.batch_size > train.shape[0]:
            warnings.warn("Got `batch_size` less than 1 or larger than sample size. It is "
                          "going to be clipped", stacklevel=3)
        max_iter = 1 if incremental else self.max_iter
        trainer = EpochTrainer(model, params, Xt, tt, self._options(batch, self._lr),
                               max_iter, sample_weight=swt, resume=self._resume)
        best = None
        for _ in range(max_iter):
            p = trainer.run(self._lr)
            self._publish(model, p)
            self.n_iter_ += 1
            self.t_ += train.shape[0]
            loss = G.loss(model, p, Xt, tt, sample_weight=swt) * self._loss_scale
            self.loss_ = loss + self._penalty(train.shape[0])
            self.loss_curve_.append(self.loss_)
            if self.verbose:
                print(f"Iteration {self.n_iter_}, loss = {self.loss_:.8f}")
            if early:
                score = self._score_rows(X[val], t[val], None if sw is None else sw[val])
                self.validation_scores_.append(score)
                self._no_improvement_count = (self._no_improvement_count + 1
                                              if score < self.best_validation_score_ + self.tol
                                              else 0)
                if score > self.best_validation_score_:
                    self.best_validation_score_ = score
                    best = p.copy()
            else:
                self._no_improvement_count = (self._no_improvement_count + 1
                                              if self.loss_ > self.best_loss_ - self.tol else 0)
                self.best_loss_ = min(self.best_loss_, self.loss_)
            if self.solver == "sgd" and self.learning_rate == "invscaling":
                self._lr = self.learning_rate_init / (self.t_ + 1) ** self.power_t
            if self._no_improvement_count > self.n_iter_no_change:
                if self.solver == "sgd" and self.learning_rate == "adaptive" and \
                        self._lr > 1e-6:
                    self._lr /= 5.0
                    self._no_improvement_count = 0
                    continue
                break
        params = (best if best is not None else trainer.params).copy()
        self._publish(model, params)
        self._resume = trainer.resume_state()
        if early:
            self.best_loss_ = None
        else:
            self.validation_scores_, self.best_validation_score_ = None, None
        if not incremental and self.n_iter_ == self.max_iter and \
                self._no_improvement_count <= self.n_iter_no_change:
            warnings.warn(f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached "
                          "and the optimization hasn't converged yet.", ConvergenceWarning,
                          stacklevel=3)
        return self

    def _outputs(self, X):
        check_is_fitted(self, "_params")
        X = validate_data(self, X, accept_sparse="csr", reset=False,
                          dtype=[np.float64, np.float32])
        return self._raw(X)

    def _raw(self, X):
        """The network's outputs ``(n, n_outputs)`` for validated ``X``."""
        f = G.decision_function(self._model, self._params.astype(X.dtype, copy=False), X)
        return f.reshape(X.shape[0], -1)


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """A multi-layer perceptron classifier, as ``sklearn.neural_network.MLPClassifier``.

    scikit-learn's arguments, methods and fitted attributes; each epoch is one call of
    fastmb's training kernel (``solver`` ``"adam"`` or ``"sgd"`` with Nesterov momentum;
    ``"lbfgs"`` raises). Two classes train one logistic output, more a softmax layer.

    Examples
    --------
    >>> import numpy as np
    >>> from fastmb.sklearn import MLPClassifier
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(300, 4)); y = (X[:, 0] * X[:, 1] > 0).astype(int)
    >>> clf = MLPClassifier((16,), learning_rate_init=0.01, max_iter=500,
    ...                     random_state=0).fit(X, y)
    >>> [c.shape for c in clf.coefs_], clf.score(X, y) > 0.9
    ([(4, 16), (16, 1)], True)
    """

    _loss_scale = 1.0

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam",
                 alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000):
        _keep_arguments(self, locals())

    def fit(self, X, y, sample_weight=None):
        """Train for ``max_iter`` epochs at most (scikit-learn's stopping rule)."""
        return self._fit_classes(X, y, sample_weight, None, incremental=False)

    def partial_fit(self, X, y, sample_weight=None, classes=None):
        """One epoch over ``(X, y)``; the first call needs ``classes``."""
        if not hasattr(self, "classes_") and classes is None:
            raise ValueError("classes must be passed on the first call to partial_fit.")
        return self._fit_classes(X, y, sample_weight, classes, incremental=True)

    def _fit_classes(self, X, y, sample_weight, classes, incremental):
        hidden = self._check_params()
        reset = not (incremental and hasattr(self, "classes_"))
        X, y = validate_data(self, X, y, accept_sparse="csr", dtype=[np.float64, np.float32],
                             reset=reset)
        check_classification_targets(y)
        if reset:
            self.classes_ = np.unique(y if classes is None else classes)
            if incremental and hasattr(self, "_params"):
                del self._params
        if not np.isin(y, self.classes_).all():
            raise ValueError(f"y has classes {np.setdiff1d(y, self.classes_)!r} that are "
                             f"not in classes {self.classes_!r}")
        k = len(self.classes_)
        if k < 2:
            raise ValueError(f"The number of classes has to be greater than one; got {k} "
                             "class")
        binary = k == 2
        model = self._make_model(X.shape[1], hidden, 1 if binary else k,
                                 "logistic" if binary else "softmax")
        self.out_activation_ = "logistic" if binary else "softmax"
        sw = None if sample_weight is None else _check_sample_weight(sample_weight, X)
        t = np.searchsorted(self.classes_, y)
        return self._fit(X, t, model, sw, incremental)

    def _score_rows(self, X, t, sw):
        f = self._raw(X)
        idx = (f[:, 0] > 0).astype(int) if f.shape[1] == 1 else f.argmax(axis=1)
        return float(np.average(idx == t, weights=sw))

    def predict_proba(self, X):
        """Class probabilities, ``(n, n_classes)``."""
        f = self._outputs(X)
        if f.shape[1] == 1:
            p = 1.0 / (1.0 + np.exp(-f[:, 0]))
            return np.column_stack([1 - p, p])
        e = np.exp(f - f.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def predict_log_proba(self, X):
        """``log(predict_proba(X))``."""
        return np.log(self.predict_proba(X))

    def predict(self, X):
        """The class of each row."""
        f = self._outputs(X)
        idx = (f[:, 0] > 0).astype(int) if f.shape[1] == 1 else f.argmax(axis=1)
        return self.classes_[idx]


class MLPRegressor(RegressorMixin, _BaseMLP):
    """A multi-layer perceptron regressor, as ``sklearn.neural_network.MLPRegressor``.

    scikit-learn's arguments, methods and fitted attributes, on fastmb's training kernel
    (``loss="squared_error"``; ``"poisson"`` and ``solver="lbfgs"`` raise).

    Examples
    --------
    >>> import numpy as np
    >>> from fastmb.sklearn import MLPRegressor
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(400, 3)); y = X @ [1.0, -2.0, 0.5]
    >>> reg = MLPRegressor(hidden_layer_sizes=(16,), max_iter=500, random_state=0).fit(X, y)
    >>> reg.score(X, y) > 0.95
    True
    """

    def __init__(self, loss="squared_error", hidden_layer_sizes=(100,), activation="relu", *,
                 solver="adam", alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000):
        _keep_arguments(self, locals())

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def fit(self, X, y, sample_weight=None):
        """Train for ``max_iter`` epochs at most (scikit-learn's stopping rule)."""
        return self._fit_targets(X, y, sample_weight, incremental=False)

    def partial_fit(self, X, y, sample_weight=None):
        """One epoch over ``(X, y)``."""
        return self._fit_targets(X, y, sample_weight, incremental=True)

    def _fit_targets(self, X, y, sample_weight, incremental):
        hidden = self._check_params()
        if self.loss != "squared_error":
            raise ValueError(f"loss={self.loss!r} is not implemented in fastmb; use "
                             "'squared_error'")
        reset = not (incremental and hasattr(self, "_params"))
        X, y = validate_data(self, X, y, accept_sparse="csr", dtype=[np.float64, np.float32],
                             multi_output=True, y_numeric=True, reset=reset)
        y2 = np.array(y, dtype=X.dtype).reshape(X.shape[0], -1)
        k = y2.shape[1]
        model = self._make_model(X.shape[1], hidden, k, "squared")
        self.out_activation_ = "identity"
        # scikit-learn's squared loss averages over the outputs too, fastmb's sums them
        self._loss_scale = 1.0 / k
        self._y_1d = y.ndim == 1
        sw = None if sample_weight is None else _check_sample_weight(sample_weight, X)
        return self._fit(X, y2, model, sw, incremental)

    def _score_rows(self, X, t, sw):
        return r2_score(t, self._raw(X), sample_weight=sw)

    def predict(self, X):
        """The predicted targets, ``(n,)`` or ``(n, n_outputs)``."""
        f = self._outputs(X)
        return f[:, 0] if self._y_1d else f


__all__ = ["MLPClassifier", "MLPRegressor", "SGDClassifier", "SGDRegressor"]
