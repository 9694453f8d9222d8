"""Latent class analysis: one latent class behind several categorical survey answers.

Simulates answers of respondents to six questions (three answers each)
from three latent classes, with some answers left blank (NaN), fits
``dask_em.DiscreteBayesianNetwork`` with the class as a latent parent of
every question, and prints the class sizes, each class's most likely
answers, and how often the most probable class of a respondent is the
class that generated the answers (up to the labels' order).

Run: python examples/latent_class.py [--n-samples 200000] [--missing 0.1]
"""

from __future__ import annotations

import argparse
import itertools
import os

import numpy as np
import pandas as pd

import dask_em

QUESTIONS = [f"Q{i + 1}" for i in range(6)]


def simulate(n: int, missing: float, rng: np.random.Generator) -> tuple[pd.DataFrame, np.ndarray]:
    sizes = np.array([0.5, 0.3, 0.2])
    # each class favours one answer per question, with its own pattern over the questions
    favourite = np.array([[0, 0, 1, 2, 0, 1], [1, 2, 2, 0, 1, 0], [2, 1, 0, 1, 2, 2]])
    classes = rng.choice(3, size=n, p=sizes)
    answers = np.empty((n, len(QUESTIONS)))
    for q in range(len(QUESTIONS)):
        probs = np.full((3, 3), 0.125)
        probs[np.arange(3), favourite[:, q]] = 0.75
        u = rng.random(n)
        answers[:, q] = (u[:, None] > np.cumsum(probs[classes], axis=1)).sum(axis=1)
    answers[rng.random(answers.shape) < missing] = np.nan
    return pd.DataFrame(answers, columns=QUESTIONS), classes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-samples", type=int, default=200_000)
    parser.add_argument("--missing", type=float, default=0.1, help="fraction of answers left blank")
    parser.add_argument("--small", action="store_true", help="5,000 respondents (used by the tests)")
    args = parser.parse_args()
    n = 5_000 if args.small or os.environ.get("DASK_EM_EXAMPLE_SMALL") else args.n_samples
    rng = np.random.default_rng(0)
    answers, truth = simulate(n, args.missing, rng)
    print(f"{n} respondents, {len(QUESTIONS)} questions, {float(answers.isna().mean().mean()):.0%} answers blank")

    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        model = dask_em.DiscreteBayesianNetwork(
            edges=[("Class", q) for q in QUESTIONS], latent={"Class": 3}, tol=1e-6, max_iter=300, random_state=0
        )
        model.fit(answers, client=client)
        print(f"converged: {model.converged_} after {model.n_iter_} iterations, "
              f"log-likelihood per respondent {model.lower_bound_:.4f}, BIC {model.bic(answers):.1f}")

        sizes = model.cpds_["Class"][:, 0]
        print("class sizes:", np.round(sizes, 3))
        for q in QUESTIONS:
            # rows: answers; columns: classes (the question's only parent)
            print(f"  {q}: most likely answer per class {model.cpds_[q].argmax(axis=0)}, "
                  f"P(answer | class) =\n{np.round(model.cpds_[q], 2)}")

        posterior = model.predict_proba(answers, "Class")
    predicted = posterior.argmax(axis=1)
    agreement = max(np.mean(np.asarray(perm)[predicted] == truth) for perm in itertools.permutations(range(3)))
    print(f"most probable class = generating class for {agreement:.1%} of respondents")
    assert agreement > 0.8, "the classes were not recovered"


if __name__ == "__main__":
    main()
