"""fastmb.sklearn: scikit-learn's own estimator checks, and the same bits as scikit-learn's
SGD estimators with the same settings."""

import warnings

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")
import scipy.sparse as sp  # noqa: E402
from sklearn import linear_model as L  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from fastmb.sklearn import MLPClassifier, MLPRegressor, SGDClassifier, SGDRegressor  # noqa: E402

from .conftest import readme_code  # noqa: E402

# scikit-learn marks the same checks as expected failures for its own SGD estimators
# (sklearn/utils/_test_common/instance_generator.py): with shuffling and a per-sample
# schedule, a weight of 2 is not the same as a repeated row.
SGD_XFAIL = {
    "check_sample_weight_equivalence_on_dense_data":
        "sample_weight is not equivalent to removing/repeating samples.",
    "check_sample_weight_equivalence_on_sparse_data":
        "sample_weight is not equivalent to removing/repeating samples.",
}


def _expected_failures(est):
    # scikit-learn's MLP estimators have none, and neither have fastmb's
    return SGD_XFAIL if type(est).__name__.startswith("SGD") else {}


@parametrize_with_checks([SGDClassifier(random_state=0), SGDRegressor(random_state=0),
                          MLPClassifier(random_state=0, max_iter=100),
                          MLPRegressor(random_state=0, max_iter=100)],
                         expected_failed_checks=_expected_failures)
def test_scikit_learn_estimator_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sklearn.exceptions.ConvergenceWarning)
        check(estimator)


def _data(n=240, d=7, seed=0, sparse=False):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    y3 = rng.integers(0, 3, n)
    y2 = np.where(X[:, 0] + 0.5 * X[:, 1] > 0, "yes", "no")  # string labels
    yr = X @ rng.normal(size=d) + 1.0
    if sparse:
        X = sp.csr_matrix(np.where(np.abs(X) > 0.8, X, 0.0))
    return X, y2, y3, yr, rng.uniform(0.5, 2.0, n)


def _same(a, b):
    np.testing.assert_array_equal(a.coef_, b.coef_)
    np.testing.assert_array_equal(a.intercept_, b.intercept_)
    assert a.n_iter_ == b.n_iter_ and a.t_ == b.t_


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "csr"])
@pytest.mark.parametrize("penalty", ["l2", "l1", "elasticnet", None])
@pytest.mark.parametrize("loss", ["hinge", "log_loss", "modified_huber", "squared_hinge",
                                  "perceptron", "squared_error", "huber"])
def test_classifier_equals_scikit_learn_bit_for_bit(loss, penalty, sparse):
    # Without shuffling, every step is scikit-learn's: the same coefficients, n_iter_ and
    # t_, with its stopping rule, for two classes and one-vs-rest.
    X, y2, y3, _, _ = _data(sparse=sparse)
    kw = dict(loss=loss, penalty=penalty, alpha=0.001, max_iter=25, shuffle=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sklearn.exceptions.ConvergenceWarning)
        for y in (y2, y3):
            ours, theirs = SGDClassifier(**kw).fit(X, y), L.SGDClassifier(**kw).fit(X, y)
            _same(ours, theirs)
            np.testing.assert_array_equal(ours.predict(X), theirs.predict(X))
            np.testing.assert_array_equal(ours.decision_function(X), theirs.decision_function(X))
            if loss in ("log_loss", "modified_huber"):
                np.testing.assert_allclose(ours.predict_proba(X), theirs.predict_proba(X),
                                           rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "csr"])
@pytest.mark.parametrize("learning_rate", ["constant", "optimal", "invscaling", "adaptive"])
def test_schedules_weights_equal_scikit_learn(learning_rate, sparse):
    X, _, y3, yr, sw = _data(sparse=sparse, seed=1)
    kw = dict(learning_rate=learning_rate, eta0=0.02, shuffle=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sklearn.exceptions.ConvergenceWarning)
        for loss in ("squared_error", "huber", "epsilon_insensitive",
                     "squared_epsilon_insensitive"):
            _same(SGDRegressor(loss=loss, **kw).fit(X, yr, sample_weight=sw),
                  L.SGDRegressor(loss=loss, **kw).fit(X, yr, sample_weight=sw))
        cw = dict(class_weight="balanced", loss="log_loss", **kw)
        _same(SGDClassifier(**cw).fit(X, y3, sample_weight=sw),
              L.SGDClassifier(**cw).fit(X, y3, sample_weight=sw))
        cw["class_weight"] = {0: 2.0, 2: 0.5}
        _same(SGDClassifier(**cw).fit(X, y3), L.SGDClassifier(**cw).fit(X, y3))


def test_partial_fit_warm_start_and_init_equal_scikit_learn():
    X, y2, y3, yr, _ = _data(seed=2)
    ours, theirs = SGDClassifier(shuffle=False), L.SGDClassifier(shuffle=False)
    for lo in (0, 80, 160):
        ours.partial_fit(X[lo:lo + 80], y3[lo:lo + 80], classes=[0, 1, 2])
        theirs.partial_fit(X[lo:lo + 80], y3[lo:lo + 80], classes=[0, 1, 2])
        _same(ours, theirs)
    ours, theirs = SGDRegressor(shuffle=False), L.SGDRegressor(shuffle=False)
    for _ in range(3):
        _same(ours.partial_fit(X, yr), theirs.partial_fit(X, yr))
    kw = dict(shuffle=False, warm_start=True, max_iter=3, tol=None)
    ours, theirs = SGDClassifier(**kw).fit(X, y2), L.SGDClassifier(**kw).fit(X, y2)
    _same(ours.fit(X, y2), theirs.fit(X, y2))  # continues from coef_
    init = dict(coef_init=np.ones((3, 7)), intercept_init=[0.5, 0.0, -0.5])
    _same(SGDClassifier(shuffle=False, max_iter=4, tol=None).fit(X, y3, **init),
          L.SGDClassifier(shuffle=False, max_iter=4, tol=None).fit(X, y3, **init))
    with pytest.raises(ValueError, match="classes must be passed on the first call"):
        SGDClassifier().partial_fit(X, y3)
    with pytest.raises(ValueError, match="coef_init does not match"):
        SGDClassifier().fit(X, y3, coef_init=np.ones((2, 7)))


def test_shuffled_early_stopped_fit_learns_as_scikit_learn_does():
    # Shuffling draws its own permutations: not the same bits, the same quality.
    X, y2, y3, yr, _ = _data(n=600, seed=3)
    for y in (y2, y3):
        kw = dict(random_state=0, early_stopping=True, n_iter_no_change=3)
        ours, theirs = SGDClassifier(**kw).fit(X, y), L.SGDClassifier(**kw).fit(X, y)
        assert ours.score(X, y) >= theirs.score(X, y) - 0.05
        assert SGDClassifier(**kw).fit(X, y).coef_.tobytes() == ours.coef_.tobytes()
    reg = SGDRegressor(random_state=0).fit(X, yr)
    assert reg.score(X, yr) > 0.99


def test_pipeline_and_grid_search():
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, _, y3, _, _ = _data(n=300, seed=4)
    pipe = make_pipeline(StandardScaler(), SGDClassifier(random_state=0))
    grid = GridSearchCV(pipe, {"sgdclassifier__alpha": [1e-4, 1e-2],
                               "sgdclassifier__loss": ["hinge", "log_loss"]}, cv=3)
    grid.fit(X, y3)
    assert set(grid.best_params_) == {"sgdclassifier__alpha", "sgdclassifier__loss"}
    assert grid.predict(X).shape == (300,)
    Xs = sp.csr_matrix(np.where(np.abs(X) > 0.5, X, 0))
    assert make_pipeline(SGDRegressor()).fit(Xs, X[:, 0]).predict(Xs).shape == (300,)


@pytest.mark.parametrize("params, match", [
    (dict(average=True), "average .ASGD. is not implemented"),
    (dict(learning_rate="pa1"), "passive-aggressive"),
    (dict(loss="squared_loss"), "'loss' parameter must be one of"),
    (dict(penalty="l3"), "'penalty' parameter"),
    (dict(learning_rate="optimal", alpha=0.0), "alpha must be > 0"),
    (dict(learning_rate="constant", eta0=0.0), "eta0 must be > 0"),
    (dict(l1_ratio=1.5), "'l1_ratio' parameter must be in"),
    (dict(validation_fraction=1.0), "'validation_fraction' parameter must be in"),
])
def test_arguments_fastmb_cannot_honour_are_errors(params, match):
    X, _, y3, _, _ = _data(n=50)
    with pytest.raises(ValueError, match=match):
        SGDClassifier(**params).fit(X, y3)
    if "loss" not in params:
        with pytest.raises(ValueError, match=match):
            SGDRegressor(**params).fit(X, X[:, 0])


def test_predict_proba_only_for_probabilistic_losses():
    X, _, y3, _, _ = _data(n=50)
    clf = SGDClassifier(loss="hinge").fit(X, y3)
    assert not hasattr(clf, "predict_proba")
    with pytest.raises(AttributeError, match="has no attribute .predict_proba."):
        clf.predict_proba(X)


def test_float32_input_keeps_float32():
    X, y2, _, _, _ = _data(seed=5)
    X32 = X.astype(np.float32)
    ours = SGDClassifier(shuffle=False, max_iter=5, tol=None).fit(X32, y2)
    theirs = L.SGDClassifier(shuffle=False, max_iter=5, tol=None).fit(X32, y2)
    assert ours.coef_.dtype == theirs.coef_.dtype == np.float32
    # scikit-learn keeps its running scale in float32 there; fastmb keeps it in float64
    np.testing.assert_allclose(ours.coef_, theirs.coef_, rtol=1e-4, atol=1e-5)


def test_readme_example_runs():
    scope = {}
    exec(readme_code("## A tour"), scope)
    exec(readme_code("## scikit-learn estimators"), scope)
    assert scope["clf"].predict_proba(scope["X"][:3]).shape == (3, 10)


def _same_net(a, b, rtol=1e-10, atol=1e-12):
    assert a.n_iter_ == b.n_iter_ and a.t_ == b.t_
    for x, y in zip(a.coefs_ + a.intercepts_, b.coefs_ + b.intercepts_):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)


@pytest.mark.parametrize("solver", ["adam", "sgd"])
@pytest.mark.parametrize("activation", ["relu", "tanh", "logistic", "identity"])
def test_mlp_equals_scikit_learn(solver, activation):
    # Without shuffling, every mini-batch step is scikit-learn's (its initialization, Adam
    # or Nesterov momentum, L2 on the weights); sums run in another order (BLAS, float64),
    # so the weights agree to rounding. scikit-learn's stopping rule reads its running
    # loss, fastmb's the loss after each epoch: n_iter_no_change is set out of reach here.
    from sklearn import neural_network as NN

    X, y2, y3, yr, sw = _data(n=150, seed=6)
    kw = dict(hidden_layer_sizes=(6, 5), activation=activation, solver=solver,
              shuffle=False, random_state=0, max_iter=6, batch_size=32,
              learning_rate_init=0.01, alpha=0.01, n_iter_no_change=100)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sklearn.exceptions.ConvergenceWarning)
        for y in (y2, y3):
            ours, theirs = MLPClassifier(**kw).fit(X, y), NN.MLPClassifier(**kw).fit(X, y)
            _same_net(ours, theirs)
            np.testing.assert_allclose(ours.predict_proba(X), theirs.predict_proba(X),
                                       rtol=1e-9, atol=1e-12)
            np.testing.assert_array_equal(ours.predict(X), theirs.predict(X))
        for y in (yr, np.column_stack([yr, -yr])):
            ours = MLPRegressor(**kw).fit(X, y, sample_weight=sw)
            theirs = NN.MLPRegressor(**kw).fit(X, y, sample_weight=sw)
            _same_net(ours, theirs)
            np.testing.assert_allclose(ours.predict(X), theirs.predict(X), rtol=1e-9, atol=1e-9)


def test_mlp_partial_fit_early_stopping_and_errors():
    from sklearn import neural_network as NN

    X, y2, y3, yr, _ = _data(n=400, seed=7)
    ours, theirs = MLPClassifier((8,), shuffle=False, random_state=0), \
        NN.MLPClassifier((8,), shuffle=False, random_state=0)
    for _ in range(3):
        ours.partial_fit(X, y3, classes=[0, 1, 2])
        theirs.partial_fit(X, y3, classes=[0, 1, 2])
    _same_net(ours, theirs, rtol=1e-9, atol=1e-11)
    es = MLPClassifier((16,), early_stopping=True, random_state=0, max_iter=300).fit(X, y2)
    assert es.best_loss_ is None and len(es.validation_scores_) == es.n_iter_
    assert es.best_validation_score_ == max(es.validation_scores_)
    reg = MLPRegressor(hidden_layer_sizes=(16,), random_state=0, learning_rate_init=0.01,
                       max_iter=500)
    assert reg.fit(sp.csr_matrix(X), yr).score(X, yr) > 0.9  # CSR input
    with pytest.raises(ValueError, match="solver='lbfgs' is not implemented"):
        MLPClassifier(solver="lbfgs").fit(X, y2)
    with pytest.raises(ValueError, match="y should be a 1d array"):  # multilabel
        MLPClassifier().fit(X, np.column_stack([y2 == "yes", y3 == 1]).astype(int))
    with pytest.raises(ValueError, match="loss='poisson' is not implemented"):
        MLPRegressor(loss="poisson").fit(X, yr)
    with pytest.raises(ValueError, match="partial_fit does not support early_stopping"):
        MLPRegressor(early_stopping=True).partial_fit(X, yr)


def test_verbose_reports_each_epoch(capsys):
    X, y2, _, yr, _ = _data(n=60)
    SGDClassifier(verbose=1, max_iter=3, tol=None).fit(X, y2)
    assert capsys.readouterr().out.count("-- Epoch") == 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sklearn.exceptions.ConvergenceWarning)
        MLPRegressor(hidden_layer_sizes=(4,), verbose=True, max_iter=2).fit(X, yr)
    assert "Iteration 2, loss = " in capsys.readouterr().out
