"""One rule for every URI the atlas accepts: a credential is refused, whatever it holds, and never
repeated (not in the error, a log line, or any file written), while `@` and `:` in a path are kept.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from raytools import env_with_tests_on_path
from s3server import s3_server
from synthetic import SyntheticLayer, SyntheticOptions, write_synthetic_store

from atlas.cli import main
from atlas.data.open import open_source
from atlas.site.publish import publish_site
from atlas.store.location import URI_OPTIONS, LocationError, check_uri, open_location, parse_out
from atlas.store.store import Store

SCHEMES = ("s3", "gs", "gcs", "file", "memory", "hdfs", "http", "az")
# What secrets hold: AWS secrets have `/` and `+`; escapes, unicode, the URI's own delimiters.
SEPARATORS = ("/", "@", ":", "%2F", "%40", "%3A", "?", "#", "+", "=", " ", "é", "\\", "%", "ü/", "@:")
TOKEN = st.text(st.characters(exclude_categories=("Cc", "Cs")), min_size=10, max_size=14)


@st.composite
def secret_uris(draw) -> tuple[str, list[str]]:
    """A URI with a credential in it, and the pieces of that credential (10+ characters each).

    The user holds no `/`: a `/` ends the host part for every URI parser, so what follows it is
    the path (docs/STORE.md); the password holds anything.
    """
    user_tokens = draw(st.lists(TOKEN.filter(lambda t: "/" not in t), max_size=2))
    password_tokens = draw(st.lists(TOKEN, max_size=3))
    join = st.sampled_from(SEPARATORS)
    user = "".join(
        t + (draw(join).replace("/", "") if i < len(user_tokens) - 1 else "")
        for i, t in enumerate(user_tokens)
    )
    password = "".join(
        t + (draw(join) if i < len(password_tokens) - 1 else "") for i, t in enumerate(password_tokens)
    )
    if password_tokens and draw(st.booleans()):
        password = draw(join) + password  # e.g. a secret that starts with `/` or `@`
    form = draw(st.sampled_from(["user:password", "user", ":password", "user:", "", ":"]))
    userinfo = form.replace("user", user).replace("password", password)
    scheme = draw(st.sampled_from(SCHEMES))
    host = draw(st.from_regex(r"[a-z0-9][a-z0-9.\-]{2,12}", fullmatch=True))
    path = draw(st.sampled_from(["", "/", "/p", "/imgs/2024", "/a@b:c"]))
    pieces = (user_tokens if "user" in form else []) + (password_tokens if "password" in form else [])
    return f"{scheme}://{userinfo}@{host}{path}", pieces


def leaked(text: str, pieces: list[str]) -> list[str]:
    return [piece for piece in pieces if piece in text]


@given(secret_uris())
@settings(max_examples=400, deadline=None)
def test_every_credential_is_refused_without_repeating_it(case):
    uri, pieces = case
    with pytest.raises(LocationError) as err:
        check_uri(uri, "--out")
    message = str(err.value)
    assert not leaked(message, pieces) and message.startswith("--out: ")
    with pytest.raises(LocationError):
        parse_out(uri)  # every URI reader goes through the rule
    with pytest.raises(LocationError):
        open_source(uri)


@pytest.mark.parametrize(
    "uri",
    [
        "s3://AKIAX:abc/def@atlas/p",  # the secret holds `/`: no URI parser sees a user in it
        "s3://AKIAX:123/def@atlas/p",  # ... and looks like a port
        "s3://atlas:9000/p",  # a bucket has no port
        "hdfs://user:123/x@host/p",
        "s3://atlas/p?secret_key=abc",  # pyarrow reads credentials from the query
        "s3://atlas/p#abc",
        "s3://k%3As@atlas/p",
        "s3://atlas%2Fx/p",
        "s3://ключ@atlas",
        "s3://@atlas",
        "x/s3://atlas/p",  # '://' without a scheme before it
    ],
)
def test_uris_that_could_hide_a_credential_are_refused(uri):
    with pytest.raises(LocationError, match="not repeated here"):
        check_uri(uri)


PATH_SEGMENT = st.text(st.characters(exclude_categories=("Cc", "Cs"), exclude_characters="/?#"), min_size=1)


@given(
    st.from_regex(r"[a-z0-9][a-z0-9.\-]{2,20}", fullmatch=True),
    st.lists(PATH_SEGMENT, min_size=1, max_size=4),
    st.sampled_from(["s3", "gs"]),
)
@settings(max_examples=200, deadline=None)
def test_at_signs_and_colons_in_a_path_are_the_paths(bucket, segments, scheme):
    path = "/".join(segments)
    assert parse_out(f"{scheme}://{bucket}/{path}") == f"{scheme}://{bucket}/{path.strip('/')}".rstrip("/")
    local = f"runs/{path}"  # a local path: no '://', nothing to refuse
    assert parse_out(local) == Path(local)


def test_ports_and_local_paths_with_at_signs_are_kept():
    assert parse_out("hdfs://namenode:8020/atlas") == "hdfs://namenode:8020/atlas"
    assert parse_out("file:///tmp/a@b:c") == Path("/tmp/a@b:c")
    assert parse_out("/data/me@host:x/out") == Path("/data/me@host:x/out")
    check_uri("ray://head:10001")


def test_endpoint_variables_meet_the_rule(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://key:s3cr3t-value@127.0.0.1:9/")
    with pytest.raises(LocationError, match="AWS_ENDPOINT_URL") as err:
        open_location("s3://atlas/p")
    assert "s3cr3t" not in str(err.value)


# -- every command, with the secret in every place a URI is accepted ------------------------------

SPEC = """
[job]
name = "uris"
out = {out}
[model]
name = "tiny-cnn"
{model}
[[layers]]
name = "conv2"
channels = "0:2"
{layer}
[render]
steps = 2
size = 32
[examples]
{examples}
[execute]
{execute}
[cost]
{cost}
"""
SPEC_FIELDS = {  # (table, key, how the value is written)
    "job.out": ("out", "{}"),
    "examples.source": ("examples", "source = {}"),
    "model.checkpoint": ("model", "checkpoint = {}"),
    "model.checkpoints": ("model", "checkpoints = [{}]"),
    "model.weights": ("model", "weights = {}"),
    "layers.dictionary": ("layer", "dictionary = {}"),
    "cost.throughput": ("cost", "throughput = {}"),
    "execute.address": ("execute", "address = {}"),
}
COMMANDS = {  # where a URI is given on the command line; JOB and OUT are filled in
    "run --out": ["run", "JOB", "--out", "URI"],
    "plan --out": ["plan", "JOB", "--out", "URI"],
    "scan --out": ["scan", "JOB", "--out", "URI"],
    "status --out": ["status", "JOB", "--out", "URI"],
    "timeline --out": ["timeline", "JOB", "--out", "URI"],
    "demo --out": ["demo", "--out", "URI"],
    "site OUT": ["site", "URI"],
    "site --publish": ["site", "OUT", "--publish", "URI"],
    "verify OUT": ["verify", "URI"],
    "run JOB": ["run", "URI"],
    "layers --checkpoint": ["layers", "tiny-cnn", "--checkpoint", "URI"],
    "timeline --add": ["timeline", "JOB", "--add", "URI"],
    "plan --throughput": ["plan", "JOB", "--throughput", "URI"],
    "calibrate -o": ["calibrate", "JOB", "-o", "URI"],
    "render -o": ["render", "--layer", "conv2", "--model", "tiny-cnn", "-o", "URI"],
}


def spec_text(out: str, field: str | None = None, uri: str = "") -> str:
    parts = {"out": json.dumps(out), "model": "", "layer": "", "examples": "", "execute": "", "cost": ""}
    if field:
        slot, template = SPEC_FIELDS[field]
        parts[slot] = template.format(json.dumps(uri, ensure_ascii=False))
    return SPEC.format(**parts)


def refused_without_a_trace(folder: Path, args: list[str], pieces: list[str], caplog) -> str:
    """Invoke the CLI in `folder`; one Error line, exit 2, and no piece anywhere it printed or wrote."""
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}  # the user's own spec
    caplog.clear()
    with caplog.at_level(logging.DEBUG):
        result = CliRunner().invoke(main, args, env={"XDG_CACHE_HOME": str(folder / "cache")})
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    assert not leaked(result.output + caplog.text, pieces), result.output
    written = [p for p in folder.rglob("*") if p.is_file() and before.get(p) != p.read_bytes()]
    assert not [p for p in written if leaked(p.read_bytes().decode("utf-8", "replace") + str(p), pieces)]
    return lines[0]


@given(secret_uris(), st.sampled_from(sorted(COMMANDS)))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_no_command_takes_or_repeats_a_credential_uri(caplog, case, command):
    uri, pieces = case
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        job = folder / "job.toml"
        job.write_text(spec_text(str(folder / "out")))
        names = {"JOB": str(job), "OUT": str(folder / "out"), "URI": uri}
        line = refused_without_a_trace(folder, [names.get(a, a) for a in COMMANDS[command]], pieces, caplog)
        assert "not repeated here" in line


@given(secret_uris(), st.sampled_from(sorted(SPEC_FIELDS)), st.sampled_from(["plan", "run", "status"]))
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_no_spec_field_takes_or_repeats_a_credential_uri(caplog, case, field, command):
    uri, pieces = case
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        job = folder / "job.toml"
        job.write_text(spec_text(str(folder / "out"), field, uri), encoding="utf-8")
        line = refused_without_a_trace(folder, [command, str(job)], pieces, caplog)
        key = field.split(".")[1]
        assert f".{key}: " in line and "line " in line  # the spec's key and line, as for any spec error


# -- the real commands, as a user runs them ---------------------------------------------------------


def atlas(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "atlas.cli", *args],
        cwd=cwd,
        env=env_with_tests_on_path(env),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_reported_commands_refuse_their_secrets_in_one_line(tmp_path):
    """The issue's two cases, through a real `atlas` process, against a real S3 server."""
    secret = "abc/def+GHIJKLmnop@qrs:tuv%2Fwxyz"
    pieces = ["abc/def", "GHIJKLmnop", "qrs:tuv", "wxyz", "AKIAXEXAMPLE"]
    with s3_server() as s3:
        before = s3.objects()  # moto keeps one in-memory backend per process: other tests' objects
        job = tmp_path / "job.toml"
        job.write_text(spec_text("s3://atlas/job"))
        out = atlas("run", str(job), "--out", f"s3://AKIAXEXAMPLE:{secret}@atlas/p", cwd=tmp_path)
        source = tmp_path / "source.toml"
        source.write_text(
            spec_text("s3://atlas/job", "examples.source", f"s3://AKIAXEXAMPLE:{secret}@atlas/imgs")
        )
        examples = atlas("run", str(source), cwd=tmp_path)
        objects = s3.objects()
    for result in (out, examples):
        lines = (result.stdout + result.stderr).strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("Error: "), lines
        assert not leaked(lines[0], pieces)
    assert objects == before  # refused before anything was written
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix != ".toml"]
    assert not [p for p in written if leaked(p.read_text("utf-8", "replace"), pieces)]


SMALL = SyntheticOptions(image_size=16, crop_size=12, examples_k=2, diversity=2, bins=8, channels_per_unit=4)


def test_paths_with_at_signs_and_colons_work_on_a_real_bucket(tmp_path):
    """`@` and `:` after the bucket are the path's: a store and a published site live there."""
    write_synthetic_store(tmp_path / "out", [SyntheticLayer("l", 4)], SMALL)
    local = tmp_path / "we@b:x"
    result = CliRunner().invoke(main, ["site", str(tmp_path / "out"), "--publish", str(local)])
    assert result.exit_code == 0, result.output
    assert json.loads((local / "current.json").read_text())["version"]
    with s3_server() as s3:
        store = Store("s3://atlas/a@b:c/store")
        store.write_job({"name": "at"})
        assert Store("s3://atlas/a@b:c/store").job() == {"name": "at"}
        entry = publish_site(tmp_path / "out" / "site" / "index.html", "s3://atlas/www@x:y", keep=2)
        assert entry == "s3://atlas/www@x:y/index.html"
        keys = set(s3.objects())
    assert "a@b:c/store/job.json" in keys and "www@x:y/index.html" in keys
    assert any(k.startswith("www@x:y/versions/") and k.endswith("/index.html") for k in keys)


@pytest.mark.parametrize("variable", ["AWS_ENDPOINT_URL", "STORAGE_EMULATOR_HOST"])
def test_an_endpoint_with_a_credential_stops_a_real_command(tmp_path, variable):
    env = dict(os.environ) | {variable: "http://key:endpoint-secret-value@127.0.0.1:9"}
    result = atlas(
        "verify", "s3://atlas/x" if variable.startswith("AWS") else "gs://atlas/x", cwd=tmp_path, env=env
    )
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and variable in lines[0], lines
    assert "endpoint-secret" not in lines[0]


OPTION_VALUES = st.text(st.sampled_from("abz019.:-_"), max_size=20)


@given(
    st.lists(
        st.tuples(st.sampled_from(URI_OPTIONS), OPTION_VALUES),
        min_size=1,
        max_size=4,
    )
)
def test_plain_options_in_the_query_pass(options):
    """Endpoint, scheme, region and the like hold no secret: MinIO and test servers need them."""
    query = "&".join(f"{name}={value}" for name, value in options)
    check_uri(f"s3://atlas/photos?{query}")


@given(
    st.lists(st.tuples(st.sampled_from(URI_OPTIONS), OPTION_VALUES), max_size=3),
    st.sampled_from(["access_key", "secret_key", "session_token", "role_arn", "x"]),
    TOKEN,
)
def test_a_query_option_that_can_hold_a_credential_is_refused_unrepeated(options, name, secret):
    pairs = [f"{n}={v}" for n, v in options] + [f"{name}={secret}"]
    with pytest.raises(LocationError, match="not repeated here") as refused:
        check_uri(f"s3://atlas/photos?{'&'.join(pairs)}")
    assert secret not in str(refused.value)
