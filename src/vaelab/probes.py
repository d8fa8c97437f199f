"""How useful is the code? Classifiers on posterior means from a few labels (Kingma et al.'s M1).

N labelled training images (class-balanced where the classes allow) are encoded to their
posterior means; logistic regression and k-nearest neighbours are fitted on them and
scored on the whole test split. Errors are fractions in [0, 1]. Kingma et al. (2014),
M1 + TSVM: 11.82% on MNIST with 100 labels, 54.33% on SVHN with 1000.
"""

from __future__ import annotations

import numpy as np

from .errors import VaelabError

KNN_NEIGHBOURS = 5


def balanced_indices(labels: np.ndarray, n: int, seed: int = 0, what: str = "--probe-labels") -> np.ndarray:
    """n indices of labelled items, as equal per class as the class sizes allow, seeded;
    ``what`` names the setting in errors."""
    labels = np.asarray(labels)
    known = np.flatnonzero(labels >= 0)
    if n < 1:
        raise VaelabError(f"{what} must be at least 1, got {n}")
    if len(known) < n:
        raise VaelabError(f"{what} {n}: the training split has only {len(known)} labelled images"
                          + (" (this dataset has none: use a dataset with labels, or class subfolders)"
                             if len(known) == 0 else ""))
    rng = np.random.default_rng(seed)
    classes = np.unique(labels[known])
    pools = {c: rng.permutation(known[labels[known] == c]) for c in classes}
    # share n out class by class; a class too small to take its share gives the rest away
    quota = dict.fromkeys(classes, 0)
    left = n
    while left:
        open_classes = [c for c in classes if quota[c] < len(pools[c])]
        share, extra = divmod(left, len(open_classes))
        lucky = set(rng.choice(open_classes, size=extra, replace=False).tolist()) if extra else set()
        for c in open_classes:
            take = min(share + (c in lucky), len(pools[c]) - quota[c])
            quota[c] += take
            left -= take
    return np.sort(np.concatenate([pools[c][:quota[c]] for c in classes]))


def probe_latents(run, n_labels: int, seed: int = 0, test_limit: int = 0) -> dict:
    """Fit logistic regression and k-NN on the posterior means of ``n_labels`` training images;
    return their test errors (keys prefixed ``probe_``)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train_images, train_labels = run.images("train")
    pick = balanced_indices(train_labels.numpy(), n_labels, seed=seed)
    y_train = train_labels.numpy()[pick]
    if len(np.unique(y_train)) < 2:
        raise VaelabError(f"--probe-labels {n_labels}: the labelled images cover one class only; "
                          f"a classifier needs at least two")
    test_images, test_labels = run.images("test")
    if test_limit:
        test_images, test_labels = test_images[:test_limit], test_labels[:test_limit]
    keep = test_labels.numpy() >= 0
    if not keep.any():
        raise VaelabError("the test split has no labels: latent probes need labelled test images")
    x_train = run.encode(train_images[pick])[0].double().numpy()
    x_test = run.encode(test_images[keep])[0].double().numpy()
    y_test = test_labels.numpy()[keep]
    # standardised features: lbfgs converges, and no latent unit dominates by scale alone
    logreg = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    logreg.fit(x_train, y_train)
    k = min(KNN_NEIGHBOURS, len(pick))
    knn = KNeighborsClassifier(n_neighbors=k).fit(x_train, y_train)
    return {
        "probe_labels": int(len(pick)),
        "probe_logreg_error": float(np.mean(logreg.predict(x_test) != y_test)),
        "probe_knn_error": float(np.mean(knn.predict(x_test) != y_test)),
        "probe_knn_k": int(k),
        "probe_test_images": int(len(y_test)),
    }
