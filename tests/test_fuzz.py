"""Bad input, generated: broken recipes and data files thrown at `trainopt check` (the same validation `trainopt run`
does before any work). Every one must end in exit status 2 with a one-line error — never a traceback."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trainopt.cli import main

from .conftest import classification_recipe, make_reviews, write_jsonl

SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True),
                    st.text(max_size=30), st.sampled_from(["builtin:nope", "/no/such/path", "", "-1", "1e9", "2:4",
                                                          "train", "cuda", "auto", "fp16", "::", "{", "stages"]))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                      max_leaves=6)


def _paths(node, prefix=()):
    """Every key path of a nested recipe dict/list."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield (*prefix, k)
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield (*prefix, i)
            yield from _paths(v, (*prefix, i))


def _parent(node, path):
    for p in path[:-1]:
        node = node[p]
    return node


@st.composite
def broken_recipes(draw, base: dict):
    """The valid tiny recipe with 1–3 mutations: a value replaced, a key deleted, an unknown key added."""
    r = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        paths = list(_paths(r))
        op = draw(st.sampled_from(["set", "set", "delete", "add"]))
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = _parent(r, path)
        if op == "set":
            parent[path[-1]] = draw(VALUES)
        elif op == "delete" and isinstance(parent, dict):
            del parent[path[-1]]
        elif op == "add" and isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=10))] = draw(VALUES)
    return ("recipe", r)


LINES = st.one_of(st.text(max_size=80), st.just(""), st.just("x" * 100_000), st.just('{"text": '),
                  st.just('{"text": "ok", "label": "great"}'), st.just('{"text": 3, "label": null}'),
                  st.just("text,label"), st.just('"unterminated,great'), st.just("\t\t"), st.just("[1, 2]"))


@st.composite
def broken_data(draw):
    """A data file that may be empty, hold undecodable bytes, wrong columns, one class, huge lines, bad JSON."""
    fmt = draw(st.sampled_from(["jsonl", "csv", "txt", "tsv"]))
    kind = draw(st.sampled_from(["lines", "bytes", "one_class", "unseen_test"]))
    if kind == "bytes":
        content = draw(st.binary(max_size=300))
    elif kind == "one_class":
        content = "".join(json.dumps({"text": f"review {i}", "label": "great"}) + "\n" for i in range(20)).encode()
    elif kind == "unseen_test":
        content = b"UNSEEN"
    else:
        content = "\n".join(draw(st.lists(LINES, max_size=6))).encode("utf-8", "surrogatepass")
    return ("data", fmt, kind, content)


YAML_GARBAGE = st.one_of(st.text(max_size=200), st.just("stages: [\n"), st.just("- a\n- b\n"), st.just(":"),
                         st.just("model: {path: x}\nstages: 3\n"), st.just("\x00\x01"),
                         st.binary(max_size=100).map(lambda b: b.decode("latin-1")))


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_bert_dir):
    d = tmp_path_factory.mktemp("fuzzdata")
    write_jsonl(d / "train.jsonl", make_reviews(40, seed=1))
    write_jsonl(d / "test.jsonl", make_reviews(12, seed=2))
    return classification_recipe(tiny_bert_dir, d), d


def _check(args) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["check", *args])
    return code, err.getvalue()


COUNTS = {"broken": 0, "valid": 0}
# inputs per run: the default suite's derandomized 1,300; `make fuzz` sets more (TRAINOPT_FUZZ_EXAMPLES)
EXAMPLES = int(os.environ.get("TRAINOPT_FUZZ_EXAMPLES", "1300"))


def test_generated_bad_input_never_raises_a_traceback(base, tmp_path_factory):
    recipe, data_dir = base
    work = tmp_path_factory.mktemp("fuzz")
    strategy = st.one_of(broken_recipes(recipe), broken_recipes(recipe), broken_data(),
                         YAML_GARBAGE.map(lambda t: ("yaml", t)))

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def one(case):
        path = work / "r.yaml"
        if case[0] == "recipe":
            path.write_text(yaml.safe_dump(case[1], allow_unicode=True), encoding="utf-8")
        elif case[0] == "yaml":
            path.write_text(case[1], encoding="utf-8", errors="surrogateescape")
        else:
            _, fmt, kind, content = case
            r = copy.deepcopy(recipe)
            src = work / f"data.{fmt}"
            src.write_bytes(content)
            r["data"]["source"] = str(src)
            r["data"]["test_source"] = str(data_dir / "test.jsonl")
            if kind == "unseen_test":  # valid training data, a test split with a label training never saw
                write_jsonl(src, make_reviews(20, seed=3)) if fmt == "jsonl" else src.write_text(
                    "text,label\n" + "".join(f"good {i},great\nbad {i},other\n" for i in range(10)))
                (work / "t.jsonl").write_text(json.dumps({"text": "hm", "label": "meh"}) + "\n")
                r["data"]["test_source"] = str(work / "t.jsonl")
            path.write_text(yaml.safe_dump(r), encoding="utf-8")
        code, err = _check([str(path)])
        assert "Traceback" not in err
        if code == 0:
            COUNTS["valid"] += 1
            return
        COUNTS["broken"] += 1
        assert code == 2, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("trainopt: "), err

    one()
    print(f"generated inputs: {COUNTS}")
    # the figure: at least three in four generated inputs broken (1,000 of the default 1,300), each a one-line error
    assert COUNTS["broken"] >= EXAMPLES * 3 // 4, COUNTS


@pytest.mark.parametrize("content, fmt, needle", [
    (b"", "jsonl", "no training texts"),
    (b"\n\n\n", "txt", "label_column"),  # a txt file has no label column for a classifier
    (b'{"text": "a", "label": "great"}\n{"text": "b", "label": "great"}\n', "jsonl", "single class"),
    (b'{"review": "a", "label": "x"}\n', "jsonl", "text"),
    (b"\xff\xfe\x00bad bytes\n", "jsonl", ""),
])
def test_data_edge_cases_are_one_line_errors(base, tmp_path, content, fmt, needle):
    recipe, data_dir = base
    src = tmp_path / f"d.{fmt}"
    src.write_bytes(content)
    r = copy.deepcopy(recipe)
    r["data"]["source"] = str(src)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(r))
    code, err = _check([str(path)])
    assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err, err


def test_unseen_test_labels_error_or_drop(base, tmp_path):
    recipe, data_dir = base
    (tmp_path / "t.jsonl").write_text(json.dumps({"text": "fine", "label": "meh"}) + "\n"
                                      + json.dumps({"text": "yum", "label": "great"}) + "\n")
    r = copy.deepcopy(recipe)
    r["data"]["test_source"] = str(tmp_path / "t.jsonl")
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(r))
    code, err = _check([str(path)])
    assert code == 2 and "never seen in training" in err and "unseen_labels: drop" in err
    assert _check([str(path), "--set", "data.unseen_labels=drop"])[0] == 0


def test_long_lines_and_non_utf8_bytes_load(base, tmp_path):
    recipe, _ = base
    rows = make_reviews(30, seed=4)
    rows[0]["text"] = "word " * 50_000
    src = tmp_path / "d.jsonl"
    src.write_bytes("".join(json.dumps(r) + "\n" for r in rows).encode() + b'{"text": "caf\xe9", "label": "other"}\n')
    r = copy.deepcopy(recipe)
    r["data"]["source"] = str(src)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(r))
    assert _check([str(path)]) == (0, "")
    assert _check([str(path), "--set", "data.encoding_errors=strict"])[0] == 2


CONFIG_KEYS = ["num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size", "vocab_size",
               "max_position_embeddings", "model_type", "architectures", "id2label", "label2id", "hidden_act",
               "type_vocab_size", "layer_norm_eps", "torch_dtype", "auto_map", "trainopt"]
META_KEYS = ["task", "labels", "max_length", "clean", "structure", "quantization", "sft", "lora", "export"]


@st.composite
def damaged_folders(draw):
    """(file, how, content) for a copy of a saved model folder: config.json or trainopt.json with a key set to any
    value, deleted or the whole file replaced; model.safetensors cut short, grown or with its header bytes changed."""
    target = draw(st.sampled_from(["config.json", "config.json", "trainopt.json", "trainopt.json", "model.safetensors"]))
    if target == "model.safetensors":
        return target, draw(st.sampled_from(["cut", "append", "header"])), draw(st.integers(0, 4000))
    if draw(st.integers(0, 5)) == 0:
        return target, "replace", draw(YAML_GARBAGE)
    keys = CONFIG_KEYS if target == "config.json" else META_KEYS
    edits = draw(st.lists(st.tuples(st.sampled_from(keys), st.one_of(st.none(), VALUES)), min_size=1, max_size=3))
    return target, "edit", edits


def test_generated_damaged_model_folders_are_one_line_errors(base, tmp_path_factory, tiny_bert_dir):
    """A saved folder is an input too (issue 28): damaged config.json, trainopt.json and safetensors files as
    model.path (`trainopt check`) and as `trainopt predict`'s folder — a one-line exit 2 or a correct run, never a
    traceback or a model built from a config this machine cannot hold."""
    import shutil

    recipe, _ = base
    work = tmp_path_factory.mktemp("folders")
    original = {f.name: f.read_bytes() for f in tiny_bert_dir.iterdir() if f.is_file()}
    original["trainopt.json"] = json.dumps({"task": "classification", "labels": ["great", "other"]}).encode()
    counts = {"refused": 0, "ran": 0}

    @settings(max_examples=max(60, EXAMPLES // 8), deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=damaged_folders())
    def one(case):
        folder = work / "model"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        for name, data in original.items():
            (folder / name).write_bytes(data)
        target, how, what = case
        path = folder / target
        if how == "edit":
            content = json.loads(path.read_text())
            for key, value in what:
                if value is None:
                    content.pop(key, None)
                else:
                    content[key] = value
            path.write_text(json.dumps(content))
        elif how == "replace":
            path.write_text(what, encoding="utf-8", errors="surrogateescape")
        elif how == "cut":
            path.write_bytes(path.read_bytes()[:what])
        elif how == "append":
            path.write_bytes(path.read_bytes() + b"\x00" * what)
        else:
            data = bytearray(path.read_bytes())
            data[8 + what % 64] = (data[8 + what % 64] + 1) % 256
            path.write_bytes(bytes(data))
        r = copy.deepcopy(recipe)
        r["model"]["path"] = str(folder)
        (work / "r.yaml").write_text(yaml.safe_dump(r))
        for args in (["check", str(work / "r.yaml")], ["predict", str(folder), "--text", "tasty"]):
            err = io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                code = main(args)
            assert "Traceback" not in err.getvalue()
            if code == 0:
                counts["ran"] += 1
                continue
            counts["refused"] += 1
            lines = err.getvalue().strip().splitlines()
            assert code == 2 and len(lines) == 1 and lines[0].startswith("trainopt: "), (case, args, err.getvalue())

    one()
    print(f"damaged folders: {counts}")
    assert counts["refused"] >= counts["ran"], counts


# accepted inputs run for real: the default suite runs a few, `make fuzz` more (TRAINOPT_FUZZ_RUNS)
RUNS = int(os.environ.get("TRAINOPT_FUZZ_RUNS", "2"))
CHILD = ("import resource, sys\nfrom trainopt.cli import main\ncode = main(sys.argv[1:])\n"
         "print(f'MAXRSS_KIB {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}', file=sys.stderr)\nsys.exit(code)")


def _run_child(args, cwd) -> tuple[int, str, float, int]:
    """`trainopt …` in a fresh process: (exit code, stderr, seconds, peak resident memory in bytes)."""
    import subprocess
    import sys
    import time

    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    rss = [int(line.split()[1]) * 1024 for line in proc.stderr.splitlines() if line.startswith("MAXRSS_KIB ")]
    err = "\n".join(line for line in proc.stderr.splitlines() if not line.startswith("MAXRSS_KIB "))
    return proc.returncode, err, time.perf_counter() - t0, rss[0] if rss else 0


def test_accepted_generated_recipes_run_two_steps_in_bounded_memory(base, tmp_path_factory):
    """The fuzzer's other half (issue 28): a generated recipe that `check` accepts must also run — here two training
    steps of the tiny model end to end (data, training, measurement, report) in a fresh process — and end in exit 0
    or a one-line error, within 60 s and 2 GiB of resident memory."""
    recipe, _ = base
    work = tmp_path_factory.mktemp("fuzzruns")
    accepted: list[dict] = []

    @settings(max_examples=max(60, RUNS * 25), deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=broken_recipes(recipe))
    def collect(case):
        r = case[1]
        if len(accepted) >= RUNS or not isinstance(r.get("stages"), list) or not r["stages"]:
            return
        path = work / f"cand{len(accepted)}.yaml"
        path.write_text(yaml.safe_dump(r, allow_unicode=True), encoding="utf-8")
        if _check([str(path), "--set", "stages.0.max_steps=2", "--set", "measure.latency=false"])[0] == 0:
            accepted.append(r)

    collect()
    assert len(accepted) == RUNS, f"only {len(accepted)} accepted inputs in the sample"
    worst = [0.0, 0]  # the slowest run's seconds, the largest peak resident memory
    for i, r in enumerate(accepted):
        path = work / f"ok{i}.yaml"
        path.write_text(yaml.safe_dump(r, allow_unicode=True), encoding="utf-8")
        code, err, seconds, rss = _run_child(["run", path, "--out", work / f"run{i}", "--set", "stages.0.max_steps=2",
                                              "--set", "measure.latency=false"], work)
        assert "Traceback" not in err, err
        assert code == 0 or (code in (1, 2) and len(err.strip().splitlines()) == 1), (r, err)
        assert seconds < 60, (r, seconds)
        assert 0 < rss < 2 * 2**30, (r, rss)
        worst = [max(worst[0], seconds), max(worst[1], rss)]
    print(f"accepted inputs run: {len(accepted)}, slowest {worst[0]:.1f} s, "
          f"largest peak memory {worst[1] / 2**20:.0f} MiB")


def _tree(folder):
    """Every file under `folder` with its bytes (what must survive a refused run)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_generated_run_directories_lose_nothing(base, tmp_path, monkeypatch, capsys):
    """Run directories as input (issue 28): `--out` at a fresh path, a finished trainopt run, a folder of the user's,
    the recipe's data folder, its parent, the current folder or a file, each with no flag, --overwrite or --resume
    (21 cases). Every case runs (a fresh path; --overwrite or --resume of trainopt's own run) or is refused in one
    line with exit 2 — and no file trainopt did not create is changed or lost."""
    recipe, data_dir = base
    r = copy.deepcopy(recipe)
    r["stages"][0].update({"max_steps": 2, "eval_every": 2, "checkpoint_every": 2})
    r["measure"]["latency"] = False
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(r))
    user = tmp_path / "user"
    (user / "photos").mkdir(parents=True)
    (user / "notes.txt").write_text("mine")
    (user / "photos" / "a.jpg").write_bytes(b"\xff\xd8 jpeg")
    single = tmp_path / "file.txt"
    single.write_text("a file, not a folder")
    run = tmp_path / "run"
    assert main(["run", str(path), "--out", str(run)]) == 0
    capsys.readouterr()
    monkeypatch.chdir(user)
    foreign = {"user": user, "data": data_dir, "parent_of_data": data_dir.parent, "cwd": Path("."), "file": single}
    before = {name: (_tree(p) if p.is_dir() else p.read_bytes()) for name, p in foreign.items()}
    outcomes = {}
    for target in ["fresh", "run", *foreign]:
        for flag in ([], ["--overwrite"], ["--resume"]):
            out = tmp_path / f"fresh{len(outcomes)}" if target == "fresh" else run if target == "run" \
                else foreign[target]
            code = main(["run", str(path), "--out", str(out), *flag])
            err = capsys.readouterr().err.strip()
            outcomes[(target, *flag)] = code
            assert "Traceback" not in err
            if code != 0:
                assert code == 2 and len(err.splitlines()) == 1 and err.startswith("trainopt: "), (target, flag, err)
            for name, p in foreign.items():
                now = _tree(p) if p.is_dir() else p.read_bytes()
                if name == "parent_of_data":  # the fresh runs and the run live beside the data: its data part only
                    now = {k: v for k, v in now.items() if k.startswith(data_dir.name + "/")}
                    was = {k: v for k, v in before[name].items() if k.startswith(data_dir.name + "/")}
                else:
                    was = before[name]
                assert now == was, (target, flag, name)
    # the cases that must run, and that a finished run refuses a plain second run
    assert all(outcomes[k] == 0 for k in [("fresh",), ("fresh", "--overwrite"), ("fresh", "--resume"),
                                          ("run", "--overwrite"), ("run", "--resume")])  # --resume of nothing: a start
    assert outcomes[("run",)] == 2
    assert all(code == 2 for (target, *_), code in outcomes.items() if target in foreign)
    # `trainopt eval --overwrite` (its own run directory) is held to the same rule
    model = run / "stages" / r["stages"][0]["name"] / "model"
    for name, p in foreign.items():
        code = main(["eval", str(model), "--out", str(p), "--overwrite", "--set", f"data.source={data_dir}"])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and err.startswith("trainopt: "), (name, err)
        now = _tree(p) if p.is_dir() else p.read_bytes()
        if name == "parent_of_data":
            assert {k: v for k, v in now.items() if k.startswith(data_dir.name + "/")} == \
                {k: v for k, v in before[name].items() if k.startswith(data_dir.name + "/")}
        else:
            assert now == before[name], name
