"""Optuna's parts: RDB storage (SQLite by default, PostgreSQL for many workers), samplers, pruners, the study."""

from __future__ import annotations

import time
from pathlib import Path


from ..errors import RecipeError, TrainoptError
from ..recipe import SearchSpec
from .space import recipe_digest




def optuna_module():
    try:
        import optuna
    except ImportError as e:  # a pinned dependency; only a broken install gets here
        raise TrainoptError(f"trainopt tune needs optuna ({e}); run `make install`") from None
    import warnings

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def storage_url(search: SearchSpec, run_dir: Path, override: str | None) -> str:
    url = override or search.storage
    if url is None:
        return f"sqlite:///{(run_dir / 'study.db').resolve()}"
    if not (url.startswith("sqlite:///") or url.startswith("postgresql")):
        raise RecipeError("search.storage", f"unsupported storage '{url}'",
                          "use sqlite:///path.db or postgresql://user@host:port/db")
    return url


def open_storage(url: str, heartbeat_s: int):
    optuna = optuna_module()
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    for attempt in range(5):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=heartbeat_s,
                                              grace_period=2 * heartbeat_s)
        except Exception as e:  # SQLAlchemy/driver errors: an unreachable server, bad credentials, no driver
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            racing = any(m in msg for m in ("already exists", "duplicate key", "UniqueViolation"))
            if racing and attempt < 4:  # workers starting together race to create the tables
                time.sleep(1.0 + attempt)
                continue
            raise TrainoptError(f"cannot open the study storage {safe_url(url)}: {msg}") from None


def safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        cred, host = rest.rsplit("@", 1)
        return f"{scheme}://{cred.split(':')[0]}:***@{host}" if ":" in cred else url
    return url


# A resumed study's sampler is seeded by its seed plus this times the trials already in it: a seeded sampler built
# afresh would propose its first values again (a resumed random study re-ran the trials it started with); the
# offset keeps a resume reproducible (same study state, same proposals) and clear of other workers' seed + k.
SEED_STRIDE = 1009


def make_sampler(search: SearchSpec, seed: int):
    s = optuna_module().samplers
    if search.sampler == "random":
        return s.RandomSampler(seed=seed)
    if search.sampler == "grid":
        return s.GridSampler({k: p.grid() for k, p in search.space.items()}, seed=seed)
    if search.sampler == "gp":
        return s.GPSampler(seed=seed, n_startup_trials=search.startup_trials)
    if search.sampler == "nsga2":
        return s.NSGAIISampler(seed=seed, population_size=max(4, min(50, (search.trials or 20) // 2)))
    return s.TPESampler(seed=seed, n_startup_trials=search.startup_trials, multivariate=True)


def make_pruner(search: SearchSpec):
    p, pr = search.pruner, optuna_module().pruners
    inner = _base_pruner(p, pr)
    if p.patience is None:
        return inner
    return pr.PatientPruner(None if p.name == "none" else inner, patience=p.patience, min_delta=p.min_delta)


def _base_pruner(p, pr):
    if p.name == "median":
        return pr.MedianPruner(n_startup_trials=p.startup_trials, n_warmup_steps=p.warmup_evals)
    if p.name == "percentile":
        return pr.PercentilePruner(p.percentile, n_startup_trials=p.startup_trials, n_warmup_steps=p.warmup_evals)
    if p.name == "halving":
        return pr.SuccessiveHalvingPruner(min_resource=p.min_resource, reduction_factor=p.reduction_factor)
    if p.name == "hyperband":
        return pr.HyperbandPruner(min_resource=p.min_resource, reduction_factor=p.reduction_factor)
    return pr.NopPruner()


def open_study(raw: dict, search: SearchSpec, url: str, name: str, seed: int):
    optuna = optuna_module()
    storage = open_storage(url, search.heartbeat_s)
    try:
        study = optuna.create_study(storage=storage, study_name=name, load_if_exists=True,
                                    sampler=make_sampler(search, seed), pruner=make_pruner(search),
                                    directions=[o.direction for o in search.objectives])
    except ValueError as e:  # e.g. an existing study with other directions
        raise TrainoptError(f"study '{name}' in {safe_url(url)}: {e}") from None
    if study.trials:  # a resumed study (or a worker joining one): the sampler's sequence goes on, not from its start
        study.sampler = make_sampler(search, seed + SEED_STRIDE * len(study.trials))
    digest = recipe_digest(raw)
    found = study.user_attrs.get("recipe_digest")
    if found is None:
        study.set_user_attr("recipe_digest", digest)
        study.set_user_attr("objectives", [o.model_dump() for o in search.objectives])
        for params in search.enqueue:  # known settings first (e.g. the recipe's own values)
            study.enqueue_trial(params, skip_if_exists=True)
    elif found != digest:
        raise TrainoptError(f"study '{name}' in {safe_url(url)} was started with a different recipe or search "
                            "space; use another --study-name (or the same recipe)")
    return study


# ---------------------------------------------------------------------------------------------- scoring
