"""The argument parser of ``dask-em``: every subcommand, its options and an example.

Imports only the standard library, so that ``dask-em --help`` answers at
once. The list of models in ``dask-em fit --help`` comes from the
estimators (:mod:`.models`) and is built only when that help is shown.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from .common import PROG


class _Parser(argparse.ArgumentParser):
    """An argument parser whose epilog may be a function, called when the help is shown."""

    def format_help(self) -> str:
        if callable(self.epilog):
            self.epilog = self.epilog()
        return super().format_help()


def _fit_epilog() -> str:
    from .models import models

    return ("example:\n  dask-em fit gmm data.zarr --n-components 8 --covariance-type diag --output model.zarr\n"
            "  dask-em fit kmeans points.parquet -k 5 --columns x,y --output km.zarr --json\n"
            "  dask-em fit hmm sequences.zarr -k 3 --checkpoint ckpt.zarr --output hmm.zarr\n"
            "models: " + ", ".join(models()) + " (or a class name of dask_em)")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples' line breaks; shows defaults that say something."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if default not in (None, False, argparse.SUPPRESS) and "%(default)" not in text and action.option_strings:
            text += " (default: %(default)s)"
        return text


def _common(p: argparse.ArgumentParser, *, scheduler: bool = True, json_output: bool = True) -> None:
    if scheduler:
        p.add_argument("--scheduler", metavar="ADDR", default=None,
                       help="address of a Dask scheduler (default: $DASK_EM_SCHEDULER, else this process)")
        p.add_argument("--workers", metavar="N", type=int, default=None,
                       help="run on a LocalCluster of N worker processes (0: one per core) instead of in "
                            "this process (default: $DASK_EM_WORKERS, else this process on a thread pool)")
        tls = "PEM file for a tls:// scheduler (default: $DASK_EM_TLS_%s, else dask's distributed.comm.tls config)"
        p.add_argument("--tls-ca-file", metavar="PATH", default=None, help="CA certificate " + tls % "CA_FILE")
        p.add_argument("--tls-cert", metavar="PATH", default=None, help="client certificate " + tls % "CERT")
        p.add_argument("--tls-key", metavar="PATH", default=None, help="client private key " + tls % "KEY")
    if json_output:
        p.add_argument("--json", action="store_true", help="print the result as JSON on standard output")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress or messages on standard error")
    # SUPPRESS: given after the subcommand it sets the flag, absent it leaves the top-level value.
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of errors")


def _model_options(p: argparse.ArgumentParser, *, with_k: bool = True) -> None:
    if with_k:
        p.add_argument("-k", "--n-components", type=int, default=None, metavar="K",
                       help="number of components (clusters, states)")
    p.add_argument("--covariance-type", choices=["full", "tied", "diag", "spherical"], default=None)
    p.add_argument("--max-iter", type=int, default=None, help="maximum number of EM iterations")
    p.add_argument("--tol", type=float, default=None, help="convergence threshold on the log-likelihood")
    p.add_argument("--n-init", type=int, default=None, help="number of restarts; the best is kept")
    p.add_argument("--reg-covar", type=float, default=None, help="added to the diagonal of covariances")
    p.add_argument("--init-params", default=None, help="initialisation method (model dependent)")
    p.add_argument("--random-state", type=int, default=None, help="seed for a reproducible fit")
    p.add_argument("--param", action="append", metavar="NAME=VALUE",
                   help="any other hyper-parameter of the model (value parsed as JSON), repeatable")


def _input_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--columns", default=None, help="comma-separated columns of a CSV/Parquet input")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``dask-em``."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Expectation-Maximization on data larger than memory, on Dask.",
        epilog=(
            "examples:\n"
            "  dask-em demo\n"
            "  dask-em fit gmm data.zarr -k 8 --output model.zarr\n"
            "  dask-em predict model.zarr data.zarr --output labels.zarr\n"
            "  dask-em select data.zarr --n-components 1-8 --covariance-type full,diag\n\n"
            "exit codes: 0 success, 2 bad usage or input, 1 other failure"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of errors")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    # The subcommand's name selects its function in .commands (imported only then).
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def add(name: str, help: str, example: str | Callable[[], str]) -> argparse.ArgumentParser:
        epilog = example if callable(example) else "example:\n  " + example
        return sub.add_parser(name, help=help, description=help, epilog=epilog, formatter_class=_Formatter)

    p = add("demo", "write a synthetic Gaussian mixture to Zarr and fit it on a LocalCluster",
            "dask-em demo --n-samples 1000000 --n-features 16 --n-components 8")
    p.add_argument("--n-samples", type=int, default=200_000)
    p.add_argument("--n-features", type=int, default=8)
    p.add_argument("--n-components", type=int, default=4)
    p.add_argument("--chunk-rows", type=int, default=None, help="rows per Zarr chunk (default: n_samples / 8)")
    p.add_argument("--covariance-type", choices=["full", "tied", "diag", "spherical"], default="full")
    p.add_argument("--max-iter", type=int, default=100)
    p.add_argument("--tol", type=float, default=1e-3)
    p.add_argument("--random-state", type=int, default=0)
    p.add_argument("--separation", type=float, default=2.5,
                   help="distance between component means in standard deviations")
    p.add_argument("--path", default=None, help="write the dataset here instead of a temporary directory")
    _common(p)

    p = add("fit", "fit a model to data and save it to Zarr", _fit_epilog)
    p.add_argument("model", help="gmm, kmeans, hmm, ... or a class name of dask_em")
    p.add_argument("input", help="Zarr path or URL, .npy file, or CSV/Parquet files")
    _model_options(p)
    _input_options(p)
    p.add_argument("--lengths", default=None, help="sequence lengths of an HMM input (.npy, .txt or Zarr)")
    p.add_argument("--targets", default=None, metavar="COLS",
                   help="experts, linear-regressions: the target columns (indices, or CSV/Parquet names); "
                        "default: a Zarr group's array 'y'")
    p.add_argument("--checkpoint", default=None, metavar="PATH", help="Zarr path or URL for resumable snapshots")
    p.add_argument("--checkpoint-every", type=int, default=1, metavar="N")
    p.add_argument("-o", "--output", default=None, metavar="MODEL.zarr", help="where to save the fitted model")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    _common(p)

    p = add("resume", "continue a fit from the last snapshot of its checkpoint",
            "dask-em resume ckpt.zarr --output model.zarr\n"
            "  dask-em resume ckpt.zarr data.zarr --max-iter 200 --output model.zarr")
    p.add_argument("checkpoint", help="checkpoint of 'dask-em fit --checkpoint' or estimator.fit(checkpoint=...)")
    p.add_argument("input", nargs="?", default=None,
                   help="the data the fit started on (default: the input 'dask-em fit' recorded; "
                        "checked against the checkpoint's fingerprint)")
    p.add_argument("--max-iter", type=int, default=None, help="new iteration limit")
    p.add_argument("--force", action="store_true", help="resume even if data or settings differ")
    _input_options(p)
    p.add_argument("--checkpoint-every", type=int, default=1, metavar="N")
    p.add_argument("-o", "--output", default=None, metavar="MODEL.zarr")
    p.add_argument("--overwrite", action="store_true")
    _common(p)

    p = add("predict", "write per-row predictions of a saved model to Zarr (out of core)",
            "dask-em predict model.zarr data.zarr --output labels.zarr\n"
            "  dask-em predict model.zarr data.zarr --what proba --output proba.zarr")
    p.add_argument("model", help="a model saved by 'dask-em fit'")
    p.add_argument("input", help="Zarr path or URL, .npy file, or CSV/Parquet files")
    p.add_argument("-o", "--output", required=True, metavar="OUT.zarr")
    p.add_argument("--what", choices=["labels", "proba", "score"], default="labels",
                   help="labels (predict), proba (predict_proba) or score (score_samples)")
    p.add_argument("--overwrite", action="store_true")
    _input_options(p)
    _common(p)

    p = add("score", "mean log-likelihood per sample of data under a saved model",
            "dask-em score model.zarr test.zarr --json")
    p.add_argument("model")
    p.add_argument("input")
    _input_options(p)
    _common(p)

    p = add("info", "describe a saved model, a checkpoint or a dataset", "dask-em info model.zarr --json")
    p.add_argument("path")
    _common(p, scheduler=False)

    p = add("select", "fit a grid of Gaussian mixtures in shared passes over the data, ranked by BIC",
            "dask-em select data.zarr --n-components 1-6 --covariance-type full,diag --output best.zarr")
    p.add_argument("input")
    p.add_argument("-k", "--n-components", default="1-6", help="numbers of components: '1-6' or '2,4,8'")
    p.add_argument("--covariance-type", default="full,tied,diag,spherical",
                   help="comma-separated covariance types")
    p.add_argument("--n-init", type=int, default=1, help="restarts per grid cell")
    p.add_argument("--max-iter", type=int, default=100)
    p.add_argument("--tol", type=float, default=1e-3)
    p.add_argument("--reg-covar", type=float, default=1e-6)
    p.add_argument("--random-state", type=int, default=None)
    p.add_argument("-o", "--output", default=None, metavar="MODEL.zarr", help="save the best model here")
    p.add_argument("--overwrite", action="store_true")
    _input_options(p)
    _common(p)

    p = add("report", "an HTML report with pictures (convergence, mixture projection, HMM transitions)",
            "dask-em report model.zarr --data data.zarr --output report.html\n"
            "  dask-em report hmm.zarr --data sequences.zarr --output hmm-report.html --embed")
    p.add_argument("model")
    p.add_argument("-o", "--output", required=True, metavar="REPORT.html")
    p.add_argument("--data", default=None,
                   help="data to draw a sample from (projection; for an HMM, a decoded sequence)")
    p.add_argument("--lengths", default=None, help="sequence lengths of HMM --data (.npy, .txt or Zarr)")
    p.add_argument("--sample-size", "--n-sample", dest="sample_size", type=int, default=5000,
                   help="rows (HMM: steps) of the data sample, read from a few blocks")
    p.add_argument("--embed", action="store_true", help="embed the PNGs in the HTML (one self-contained file)")
    _input_options(p)
    _common(p)
    return parser


def _version() -> str:
    from .._version import __version__

    return __version__
