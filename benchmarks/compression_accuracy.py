"""Compression ratio and accuracy cost on a real task: federated training on sklearn's digits.

    python -m benchmarks.compression_accuracy

20 clients hold an IID split of 1,437 training images (8x8 digits); each round all
clients train MLP([64, 32, 10]) for one local epoch from the global model, compress
their change ``trained - global`` with one scheme, and the server averages the
decompressed changes (int8 and QSGD straight from the codes with
``fastmb.mean_compressed``). Test accuracy on the 360 held-out images after 30 rounds,
mean of 3 seeds, and the bytes a client sends per round. Needs scikit-learn.
"""

import numpy as np

import fastmb


def _data(seed):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    return train_test_split(X, y, test_size=0.2, random_state=seed, stratify=y)


def _schemes(P):
    k = P // 100
    return {
        "none (float32)": lambda d, r, s: (d, 4 * P),
        "fp16": lambda d, r, s: _dense(fastmb.to_half(d, "fp16")),
        "bf16": lambda d, r, s: _dense(fastmb.to_half(d, "bf16")),
        "int8, block 256": lambda d, r, s: _dense(fastmb.quantize_int8(d, 256)),
        "QSGD, 16 levels": lambda d, r, s: _dense(fastmb.qsgd(d, 16, 512, seed=s)),
        "QSGD, 2 levels": lambda d, r, s: _dense(fastmb.qsgd(d, 2, 512, seed=s)),
        "top-1% + error feedback": lambda d, r, s: _sparse(fastmb.topk(d, k, residual=r)),
        "top-10% + error feedback": lambda d, r, s: _sparse(fastmb.topk(d, 10 * k, residual=r)),
        "random-10% (unbiased)": lambda d, r, s: _sparse(fastmb.randk(d, 10 * k, seed=s)),
    }


def _dense(q):
    return q.dequantize(), len(q.to_bytes())


def _sparse(s):
    return s.densify(), len(s.to_bytes())


def run(rounds=30, clients=20, seeds=(0, 1, 2), echo=print):
    model = fastmb.MLP([64, 32, 10])
    P = model.n_params
    results = {}
    for name, compress in _schemes(P).items():
        accs, sent = [], 0
        for seed in seeds:
            Xtr, Xte, ytr, yte = _data(seed)
            off = np.linspace(0, len(Xtr), clients + 1).astype(int)
            x = model.init(seed=seed)
            residuals = np.zeros((clients, P), np.float32)
            for r in range(rounds):
                T = fastmb.train_clients(model, x, Xtr, ytr, off, lr=0.1, batch_size=16,
                                         momentum=0.9, seed=1000 * seed + r)
                D = []
                for c in range(clients):
                    d, nbytes = compress(np.ascontiguousarray(T[c] - x), residuals[c],
                                         (seed * rounds + r) * clients + c)
                    D.append(d)
                    sent = nbytes
                x = x + fastmb.fedavg(np.array(D, np.float32))
            accs.append(float((fastmb.predict(model, x, Xte) == yte).mean()))
        results[name] = (float(np.mean(accs)), 4 * P / sent)
        echo(f"{name:<26} {4 * P / sent:6.1f}x smaller   test accuracy {np.mean(accs):.3f}")
    return results


if __name__ == "__main__":
    run()
